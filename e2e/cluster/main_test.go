// Package cluster_test installs Portcullis with its Helm chart and its images on a real one-node
// Kubernetes cluster (tools/kubecluster: etcd, the control plane, kubelet, containerd, kube-proxy),
// and drives it as a platform team and its workloads would: pods really run, the kubelet really
// projects their tokens, and two workload pods complete mTLS handshakes with what they received.
package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
	"github.com/portcullis-mesh/portcullis/tools/kubecluster"
)

// suite is the cluster every test of this package shares: starting one takes seconds once its
// binaries are built, but only one can run on a machine at a time.
var suite struct {
	cluster *kubecluster.Cluster
	helm    string // the helm binary
	chart   string // charts/portcullis
	dir     string // scratch space of this run (the socket directory, the CA's volume)
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	code, err := withCluster(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/cluster:", err)
		return 1
	}
	return code
}

func withCluster(m *testing.M) (int, error) {
	root, err := workspace.Root()
	if err != nil {
		return 0, err
	}
	helm, err := helmBinary(root)
	if err != nil {
		return 0, err
	}
	images, err := imageArchives(root)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "portcullis-e2e-cluster-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := kubecluster.Start(ctx, kubecluster.Options{Dir: filepath.Join(dir, "cluster")})
	if err != nil {
		return 0, err
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e/cluster: stopping the cluster:", err)
		}
	}()
	fmt.Fprintf(os.Stderr, "e2e/cluster: node Ready in %v\n", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	for _, img := range images {
		if err := c.ImportImage(ctx, img); err != nil {
			return 0, err
		}
	}
	fmt.Fprintf(os.Stderr, "e2e/cluster: %d images imported in %v\n", len(images), time.Since(start).Round(time.Millisecond))

	suite.cluster, suite.helm, suite.dir = c, helm, dir
	suite.chart = filepath.Join(root, "charts", "portcullis")
	return m.Run(), nil
}

// helmBinary is $PORTCULLIS_HELM, else the helm that `go tool task helm` builds.
func helmBinary(root string) (string, error) {
	p := os.Getenv("PORTCULLIS_HELM")
	if p == "" {
		p = filepath.Join(root, ".cache", "bin", "helm")
	}
	if info, err := os.Stat(p); err != nil || info.Mode()&0o111 == 0 {
		return "", fmt.Errorf("helm: %s is not an executable; run `go tool task helm` (or set $PORTCULLIS_HELM)", p)
	}
	return p, nil
}

// componentImages are the archives the chart and this suite need, as `go tool task images` names them.
var componentImages = []string{"citadel", "nodeagent", "kms-adapter", "mcp-sync", "portcullisctl", "sdsprobe"}

// imageArchives finds the OCI archives in $PORTCULLIS_IMAGES, else .cache/images.
func imageArchives(root string) ([]string, error) {
	dir := os.Getenv("PORTCULLIS_IMAGES")
	if dir == "" {
		dir = filepath.Join(root, ".cache", "images")
	}
	var out []string
	for _, name := range componentImages {
		p := filepath.Join(dir, name+".tar")
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("image %s: %w; run `go tool task images` (or set $PORTCULLIS_IMAGES)", name, err)
		}
		out = append(out, p)
	}
	return out, nil
}

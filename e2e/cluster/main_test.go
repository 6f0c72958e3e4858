// Package cluster_test installs Portcullis with its Helm chart and its images on a real one-node
// Kubernetes cluster (tools/kubecluster: etcd, the control plane, kubelet, containerd, kube-proxy),
// and drives it as a platform team and its workloads would: pods really run, the kubelet really
// projects their tokens, and two workload pods complete mTLS handshakes with what they received.
package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
	"github.com/portcullis-mesh/portcullis/tools/chartcheck"
	"github.com/portcullis-mesh/portcullis/tools/kubecluster"
)

// suite is what every test of this package shares: the machine's one cluster (started on first
// use by kubecluster.Shared, stopped after the last test by kubecluster.Main), helm and the chart.
var suite struct {
	cluster *kubecluster.Cluster
	helm    string // the helm binary
	chart   string // charts/portcullis
	dir     string // scratch space of this run (the socket directory, the CA's volume)
}

func TestMain(m *testing.M) {
	opts, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/cluster:", err)
		os.Exit(1)
	}
	kubecluster.Main(m, opts)
}

// setup finds helm, the chart and the images; the cluster imports the images when it starts.
func setup() (kubecluster.Options, error) {
	root, err := workspace.Root()
	if err != nil {
		return kubecluster.Options{}, err
	}
	if suite.helm, err = chartcheck.HelmBinary(); err != nil {
		return kubecluster.Options{}, err
	}
	images, err := imageArchives(root)
	if err != nil {
		return kubecluster.Options{}, err
	}
	suite.chart = filepath.Join(root, "charts", "portcullis")
	return kubecluster.Options{Images: images, LockWait: kubecluster.SharedLockWait}, nil
}

// cluster starts (or returns) the shared cluster, and the test's scratch directory with it.
func cluster(t *testing.T) *kubecluster.Cluster {
	t.Helper()
	if suite.cluster == nil {
		start := time.Now()
		suite.cluster = kubecluster.Shared(t)
		t.Logf("cluster up with %d images imported: %v", len(componentImages), time.Since(start).Round(time.Millisecond))
		// Beside the cluster's own files: the node's mount namespace sees the same paths.
		suite.dir = filepath.Join(suite.cluster.Dir(), "e2e")
		if err := os.MkdirAll(suite.dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return suite.cluster
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

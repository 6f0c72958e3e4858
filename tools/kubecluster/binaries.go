package kubecluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
)

// Environment variables that name binaries.
const (
	// KubeEnv names the all-in-one Kubernetes binary (tools/kube); unset means the one that
	// `go tool task kube` caches at .cache/bin/kube.
	KubeEnv = "PORTCULLIS_KUBE"
	// EtcdEnv names etcd; unset means etcd on PATH.
	EtcdEnv = "PORTCULLIS_ETCD"
)

const (
	depsCommand = "go tool task cluster:deps (or: apt-get install etcd-server containerd runc containernetworking-plugins nftables)"
	kubeCommand = "go tool task kube"
	cniBinDir   = "/usr/lib/cni" // Debian's containernetworking-plugins
)

// binaries are the absolute paths of what the cluster runs.
type binaries struct {
	kube, etcd, containerd, shim, runc, ctr, nft, ip, nsenter, sh string
}

// findBinaries fails, naming every missing piece and the command that installs or builds it.
func findBinaries() (binaries, error) {
	var b binaries
	var missing []string
	look := func(dst *string, name, pkg string) {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", name, pkg))
			return
		}
		*dst = p
	}
	if p := os.Getenv(EtcdEnv); p != "" {
		b.etcd = p
	} else {
		look(&b.etcd, "etcd", "etcd-server")
	}
	look(&b.containerd, "containerd", "containerd")
	look(&b.shim, "containerd-shim-runc-v2", "containerd")
	look(&b.ctr, "ctr", "containerd")
	look(&b.runc, "runc", "runc")
	look(&b.nft, "nft", "nftables")
	look(&b.ip, "ip", "iproute2")
	look(&b.nsenter, "nsenter", "util-linux")
	look(&b.sh, "sh", "dash")
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, plugin)); err != nil {
			missing = append(missing, fmt.Sprintf("%s/%s (Debian package containernetworking-plugins)", cniBinDir, plugin))
		}
	}
	var problems []string
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("missing %s; run: %s", strings.Join(missing, ", "), depsCommand))
	}
	kube, err := kubeBinary()
	if err != nil {
		problems = append(problems, err.Error())
	}
	b.kube = kube
	if os.Geteuid() != 0 {
		problems = append(problems, "the cluster needs root (containerd, the kubelet, bridges, nftables): run the tests as root")
	}
	if len(problems) > 0 {
		return b, fmt.Errorf("kubecluster preflight: %s", strings.Join(problems, "; "))
	}
	return b, nil
}

// kubeBinary is $PORTCULLIS_KUBE, else .cache/bin/kube under the repository root.
func kubeBinary() (string, error) {
	path, from := os.Getenv(KubeEnv), "$"+KubeEnv
	if path == "" {
		root, err := workspace.Root()
		if err != nil {
			return "", fmt.Errorf("kube binary: $%s is unset and %w; run: %s", KubeEnv, err, kubeCommand)
		}
		path, from = filepath.Join(root, ".cache", "bin", "kube"), "the cached build"
	}
	info, err := os.Stat(path)
	if err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		return "", fmt.Errorf("kube binary %s (from %s) is not an executable; run: %s", path, from, kubeCommand)
	}
	return path, nil
}

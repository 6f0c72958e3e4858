package kubetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
)

// Environment variables that name the server binaries; `go tool task test` sets them.
const (
	APIServerEnv = "PORTCULLIS_KUBE_APISERVER"
	EtcdEnv      = "PORTCULLIS_ETCD"
)

// apiServerBinary finds kube-apiserver: $PORTCULLIS_KUBE_APISERVER, else the binary that
// `go tool task kube-apiserver` caches under the repository's .cache/bin.
func apiServerBinary() (string, error) {
	if p := os.Getenv(APIServerEnv); p != "" {
		return executable(p, APIServerEnv)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("kube-apiserver: $%s is unset and %w; run `go tool task kube-apiserver`", APIServerEnv, err)
	}
	return executable(filepath.Join(root, ".cache", "bin", "kube-apiserver"), "the cached build")
}

// etcdBinary finds etcd: $PORTCULLIS_ETCD, else etcd on PATH (the Debian package etcd-server).
func etcdBinary() (string, error) {
	if p := os.Getenv(EtcdEnv); p != "" {
		return executable(p, EtcdEnv)
	}
	p, err := exec.LookPath("etcd")
	if err != nil {
		return "", fmt.Errorf("etcd is not on PATH and $%s is unset; run `go tool task etcd` (installs the Debian package etcd-server)", EtcdEnv)
	}
	return p, nil
}

func executable(path, from string) (string, error) {
	info, err := os.Stat(path)
	if err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s (from %s) is not an executable; run `go tool task kube-apiserver` and `go tool task etcd`", path, from)
	}
	return path, nil
}

// RepoRoot is the directory holding go.work (see libs/workspace).
func RepoRoot() (string, error) { return workspace.Root() }

// ChartCRDs is the directory of the Portcullis CRDs in the chart.
func ChartCRDs() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "charts", "portcullis", "crds"), nil
}

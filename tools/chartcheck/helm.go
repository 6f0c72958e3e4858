// Package chartcheck proves a Helm chart valid offline: `helm lint --strict`, `helm template`,
// and kubeconform -strict on every rendered manifest against the Kubernetes JSON schemas that
// tools/k8sschema generates, plus the chart's own CRDs.
package chartcheck

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
)

// HelmEnv names the helm binary; `go tool task test` sets it.
const HelmEnv = "PORTCULLIS_HELM"

// KubeVersion is the Kubernetes version the chart is rendered for and validated against; it is
// the version of tools/kubeapiserver and of the helm build's client libraries.
const KubeVersion = "v1.32.13"

// HelmBinary finds helm: $PORTCULLIS_HELM, else the build `go tool task helm` caches as
// .cache/bin/helm-<key>, the key being the hash of tools/helm's go.mod and go.sum (so a version
// bump asks for a new build rather than running the old one).
func HelmBinary() (string, error) {
	if p := os.Getenv(HelmEnv); p != "" {
		if err := isExecutable(p); err != nil {
			return "", fmt.Errorf("$%s: %w; build helm with `go tool task helm`", HelmEnv, err)
		}
		return p, nil
	}
	root, err := workspace.Root()
	if err != nil {
		return "", fmt.Errorf("finding helm: %w; build it with `go tool task helm` or set $%s", err, HelmEnv)
	}
	key, err := HelmBuildKey(root)
	if err != nil {
		return "", fmt.Errorf("finding helm: %w", err)
	}
	p := filepath.Join(root, ".cache", "bin", "helm-"+key)
	if err := isExecutable(p); err != nil {
		return "", fmt.Errorf("helm is not built (%w): run `go tool task helm` (a few minutes the first time), or set $%s", err, HelmEnv)
	}
	return p, nil
}

// HelmBuildKey must match HELM_KEY in Taskfile.yml: the first 16 hex digits of the SHA-256 of
// tools/helm's go.mod and go.sum, concatenated.
func HelmBuildKey(root string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(root, "tools", "helm", name))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func isExecutable(p string) error {
	info, err := os.Stat(p)
	if err != nil {
		return err
	}
	if info.IsDir() || info.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// Helm runs one helm binary with its config, cache and data homes in Home, so that it reads
// no user configuration and writes nothing outside it.
type Helm struct {
	Bin  string
	Home string
	Env  []string // more environment, e.g. KUBECONFIG=… for commands that reach a cluster
}

// Values are what one rendering is given: values files, then --set pairs (path=value).
type Values struct {
	Files []string
	Set   []string
}

func (v Values) args() []string {
	var a []string
	for _, f := range v.Files {
		a = append(a, "--values", f)
	}
	for _, s := range v.Set {
		a = append(a, "--set", s)
	}
	return a
}

// Lint runs `helm lint --strict`; the error carries helm's output.
func (h Helm) Lint(ctx context.Context, chart string, v Values) (string, error) {
	args := append([]string{"lint", "--strict", "--kube-version", KubeVersion, chart}, v.args()...)
	out, err := h.run(ctx, args)
	return string(out), err
}

// Template runs `helm template` with the chart's CRDs included and returns the manifests.
func (h Helm) Template(ctx context.Context, chart, release, namespace string, v Values) ([]byte, error) {
	args := append([]string{"template", release, chart, "--namespace", namespace,
		"--kube-version", KubeVersion, "--include-crds"}, v.args()...)
	return h.run(ctx, args)
}

// Run runs any helm command (install, upgrade, uninstall…) and returns its standard output; the
// error carries everything helm printed.
func (h Helm) Run(ctx context.Context, args ...string) ([]byte, error) { return h.run(ctx, args) }

func (h Helm) run(ctx context.Context, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, h.Bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(h.Home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(h.Home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(h.Home, "data"),
	)
	cmd.Env = append(cmd.Env, h.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

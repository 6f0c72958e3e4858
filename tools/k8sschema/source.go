package k8sschema

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// kubernetesModule holds api/openapi-spec/swagger.json in its module zip.
const kubernetesModule = "k8s.io/kubernetes"

// SwaggerFromModule reads api/openapi-spec/swagger.json from the k8s.io/kubernetes module zip of
// the given version.
func SwaggerFromModule(ctx context.Context, version string) ([]byte, error) {
	return ModuleFile(ctx, kubernetesModule, version, "api/openapi-spec/swagger.json")
}

// ModuleFile reads one file from a Go module's zip, fetched by `go mod download` (from the
// module cache when it is there; the kube-apiserver build puts k8s.io/kubernetes there). It is
// how CRDs of other projects (the Prometheus Operator's ServiceMonitor) are had offline too.
func ModuleFile(ctx context.Context, module, version, path string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "k8sschema-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	mod := module + "@" + version
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	cmd.Dir = tmp // no go.mod or go.work here: only the module cache and the proxy are consulted
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	var info struct{ Zip, Error string }
	if err := json.Unmarshal(out, &info); err != nil && runErr == nil {
		return nil, fmt.Errorf("go mod download %s: decoding its output: %w", mod, err)
	}
	if info.Error != "" || runErr != nil {
		return nil, fmt.Errorf("go mod download %s: %v %s %s", mod, runErr, info.Error, bytes.TrimSpace(stderr.Bytes()))
	}
	zr, err := zip.OpenReader(info.Zip)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", info.Zip, err)
	}
	defer zr.Close()
	f, err := zr.Open(mod + "/" + path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", info.Zip, err)
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Cached returns the directory of the schemas of every kind of the given Kubernetes version,
// generating them under cacheDir the first time (a few seconds). The directory's name carries
// the version and FormatVersion; a finished directory holds the marker file ".complete".
func Cached(ctx context.Context, cacheDir, version string) (string, error) {
	dir := filepath.Join(cacheDir, version+"-standalone-strict-f"+FormatVersion)
	if complete(dir) {
		return dir, nil
	}
	swagger, err := SwaggerFromModule(ctx, version)
	if err != nil {
		return "", err
	}
	defs, err := ParseSwagger(swagger)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".tmp-"+version+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if _, err := defs.WriteKinds(tmp); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	// Another process may have finished first: its directory is as good as ours. The marker
	// is written before the rename, so a directory at this name is always complete.
	if err := os.Rename(tmp, dir); err != nil && !complete(dir) {
		return "", err
	}
	return dir, nil
}

func complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, ".complete"))
	return err == nil
}

// Command images builds every Portcullis service (and the test and sandbox images) as a static
// binary and packs each into a one-layer OCI image archive, <out>/<name>.tar, without a Docker
// daemon or a registry. `ctr -n k8s.io images import <out>/<name>.tar` loads one into
// containerd under <repo>/<name>:<tag>. The same source gives the same digests (see ociimage).
//
//	go run ./tools/cmd/images -only citadel,pause
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/ociimage"
)

// versionVar is the variable the version is linked into (lifecycle.Main logs it).
const versionVar = "github.com/portcullis-mesh/portcullis/libs/lifecycle.Version"

const sourceURL = "https://github.com/portcullis-mesh/portcullis"

type config struct {
	out, repo, tag, only, arch string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg config
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.out, "out", ".cache/images", "directory for <name>.tar, images.json and bin/ (relative to the repository root)")
	fs.StringVar(&cfg.repo, "repo", "ghcr.io/portcullis-mesh", "image repository prefix: images are <repo>/<name>:<tag>")
	fs.StringVar(&cfg.tag, "tag", "", "image tag (default: appVersion of charts/portcullis/Chart.yaml, else git describe)")
	fs.StringVar(&cfg.only, "only", "", "comma-separated image names to build (default: all)")
	fs.StringVar(&cfg.arch, "arch", runtime.GOARCH, "GOARCH of the binaries and images (GOOS is linux)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := build(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "images: %v\n", err)
		return 1
	}
	return 0
}

// result is one line of the report and one entry of images.json.
type result struct {
	Name    string        `json:"name"`
	Ref     string        `json:"ref"`
	Archive string        `json:"archive"`
	Digest  string        `json:"digest"`
	Rev     string        `json:"revision"`
	Bytes   int64         `json:"bytes"`
	Compile time.Duration `json:"-"`
	Pack    time.Duration `json:"-"`
}

func build(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	var only []string
	if cfg.only != "" {
		only = strings.Split(cfg.only, ",")
	}
	images, err := selectImages(only)
	if err != nil {
		return err
	}
	src, err := findSource()
	if err != nil {
		return err
	}
	if cfg.tag == "" {
		cfg.tag = src.defaultTag()
	}
	out := cfg.out
	if !filepath.IsAbs(out) {
		out = filepath.Join(src.root, out)
	}
	binDir := filepath.Join(out, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}

	start := time.Now()
	var results []result
	for _, img := range images {
		r, err := buildOne(ctx, src, cfg, img, out, stderr)
		if err != nil {
			return fmt.Errorf("%s: %w", img.name, err)
		}
		results = append(results, r)
	}
	if err := writeIndex(filepath.Join(out, "images.json"), results); err != nil {
		return err
	}
	report(stdout, results, time.Since(start))
	return nil
}

func buildOne(ctx context.Context, src source, cfg config, img image, out string, stderr io.Writer) (result, error) {
	bin := filepath.Join(out, "bin", img.name)
	t0 := time.Now()
	gobuild := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X "+versionVar+"="+cfg.tag, "-o", bin, img.pkg)
	gobuild.Dir = src.root
	gobuild.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+cfg.arch)
	gobuild.Stdout, gobuild.Stderr = stderr, stderr
	if err := gobuild.Run(); err != nil {
		return result{}, fmt.Errorf("go build %s: %w", img.pkg, err)
	}
	compiled := time.Now()

	ref := cfg.repo + "/" + img.name + ":" + cfg.tag
	archive := filepath.Join(out, img.name+".tar")
	digest, err := ociimage.Write(archive, ociimage.Spec{
		Ref:    ref,
		Binary: bin,
		User:   img.user,
		Labels: map[string]string{
			"org.opencontainers.image.title":       img.name,
			"org.opencontainers.image.description": img.description,
			"org.opencontainers.image.version":     cfg.tag,
			"org.opencontainers.image.revision":    src.revision,
			"org.opencontainers.image.source":      sourceURL,
			"org.opencontainers.image.created":     src.created.Format(time.RFC3339),
		},
		Created: src.created,
		Arch:    cfg.arch,
	})
	if err != nil {
		return result{}, err
	}
	info, err := os.Stat(archive)
	if err != nil {
		return result{}, err
	}
	return result{
		Name: img.name, Ref: ref, Archive: archive, Digest: digest, Rev: src.revision, Bytes: info.Size(),
		Compile: compiled.Sub(t0), Pack: time.Since(compiled),
	}, nil
}

// writeIndex writes images.json: what the cluster harness imports, by name.
func writeIndex(path string, results []result) error {
	b, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func report(w io.Writer, results []result, total time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tSIZE\tDIGEST\tGO BUILD\tPACK")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%.1f MiB\t%s\t%s\t%s\n", r.Ref, float64(r.Bytes)/(1<<20), r.Digest,
			r.Compile.Round(10*time.Millisecond), r.Pack.Round(10*time.Millisecond))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d images in %s\n", len(results), total.Round(10*time.Millisecond))
}

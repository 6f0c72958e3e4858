package ociimage_test

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/portcullis-mesh/portcullis/tools/ociimage"
)

const testRef = "ghcr.io/portcullis-mesh/demo:0.1.0"

// testSpec returns a spec for a fake "binary": the image does not care what the bytes are.
func testSpec(t *testing.T) ociimage.Spec {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "demo")
	if err := os.WriteFile(bin, []byte("\x7fELF not really a binary\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return ociimage.Spec{
		Ref:    testRef,
		Binary: bin,
		User:   ociimage.NonRootUser,
		Labels: map[string]string{
			"org.opencontainers.image.version":  "0.1.0",
			"org.opencontainers.image.revision": "abc123",
		},
		Created: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC),
		Arch:    "amd64",
	}
}

func TestWriteIsReproducible(t *testing.T) {
	spec := testSpec(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	da, err := ociimage.Write(a, spec)
	if err != nil {
		t.Fatal(err)
	}
	// A different mtime on the binary must not change anything.
	if err := os.Chtimes(spec.Binary, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	db, err := ociimage.Write(b, spec)
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Fatalf("digests differ: %s vs %s", da, db)
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if string(ba) != string(bb) {
		t.Fatal("archives differ byte for byte")
	}

	spec.Labels = map[string]string{"org.opencontainers.image.revision": "def456"}
	dc, err := ociimage.Write(filepath.Join(dir, "c.tar"), spec)
	if err != nil {
		t.Fatal(err)
	}
	if dc == da {
		t.Fatal("a different label gave the same digest")
	}
}

func TestWriteReadBack(t *testing.T) {
	spec := testSpec(t)
	archive := filepath.Join(t.TempDir(), "demo.tar")
	digest, err := ociimage.Write(archive, spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := untar(t, archive)

	var index v1.IndexManifest
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	m := index.Manifests[0]
	if m.Digest.String() != digest {
		t.Errorf("index digest %s, Write returned %s", m.Digest, digest)
	}
	if got := m.Annotations[ociimage.AnnotationContainerdImageName]; got != testRef {
		t.Errorf("containerd image name %q, want %q", got, testRef)
	}
	if got := m.Annotations[ociimage.AnnotationRefName]; got != "0.1.0" {
		t.Errorf("ref name %q, want the tag", got)
	}
	if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != "amd64" {
		t.Errorf("platform %+v, want linux/amd64", m.Platform)
	}

	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Image(m.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" {
		t.Errorf("user %q", cfg.Config.User)
	}
	if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/demo" {
		t.Errorf("entrypoint %q, want [/demo]", cfg.Config.Entrypoint)
	}
	if cfg.Config.Labels["org.opencontainers.image.revision"] != "abc123" {
		t.Errorf("labels %v", cfg.Config.Labels)
	}
	if !cfg.Created.Time.Equal(spec.Created) || cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("created %v os %s arch %s", cfg.Created, cfg.OS, cfg.Architecture)
	}

	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	type file struct {
		mode int64
		body string
	}
	got := map[string]file{}
	var order []string
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(spec.Created) {
			t.Errorf("%s: uid %d gid %d mtime %v", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
		body, _ := io.ReadAll(tr)
		got[hdr.Name] = file{mode: hdr.Mode, body: string(body)}
		order = append(order, hdr.Name)
	}
	want := []string{"demo", "etc/", "etc/group", "etc/passwd"}
	if len(order) != len(want) {
		t.Fatalf("layer holds %q, want %q", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("layer holds %q, want %q (sorted)", order, want)
		}
	}
	for name, mode := range map[string]int64{"demo": 0o755, "etc/": 0o755, "etc/group": 0o644, "etc/passwd": 0o644} {
		if got[name].mode != mode {
			t.Errorf("%s mode %o, want %o", name, got[name].mode, mode)
		}
	}
	if want := "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"; !strings.Contains(got["etc/passwd"].body, want) {
		t.Errorf("/etc/passwd lacks the nonroot user: %q", got["etc/passwd"].body)
	}
	if !strings.Contains(got["etc/group"].body, "nonroot:x:65532:\n") {
		t.Errorf("/etc/group lacks the nonroot group: %q", got["etc/group"].body)
	}
}

// containerd and the kubelet look Docker Hub images up as docker.io/library/<name>.
func TestWriteNamesDockerHubImagesAsContainerdDoes(t *testing.T) {
	spec := testSpec(t)
	spec.Ref = "busybox:1.36"
	dir := untarOf(t, spec)
	var index v1.IndexManifest
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	if got := index.Manifests[0].Annotations[ociimage.AnnotationContainerdImageName]; got != "docker.io/library/busybox:1.36" {
		t.Errorf("containerd image name %q, want docker.io/library/busybox:1.36", got)
	}
}

func untarOf(t *testing.T, spec ociimage.Spec) string {
	t.Helper()
	archive := filepath.Join(t.TempDir(), "image.tar")
	if _, err := ociimage.Write(archive, spec); err != nil {
		t.Fatal(err)
	}
	return untar(t, archive)
}

func TestWriteRejectsBadSpecs(t *testing.T) {
	spec := testSpec(t)
	out := filepath.Join(t.TempDir(), "x.tar")
	for name, mutate := range map[string]func(*ociimage.Spec){
		"digest ref": func(s *ociimage.Spec) {
			s.Ref = "ghcr.io/x/y@sha256:0123456789012345678901234567890123456789012345678901234567890123"
		},
		"bad ref":     func(s *ociimage.Spec) { s.Ref = "Not A Ref" },
		"no binary":   func(s *ociimage.Spec) { s.Binary = "" },
		"missing bin": func(s *ociimage.Spec) { s.Binary = filepath.Join(t.TempDir(), "nope") },
	} {
		s := spec
		mutate(&s)
		if _, err := ociimage.Write(out, s); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Write left %s behind", out)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// untar unpacks an archive into a temp dir and returns the dir.
func untar(t *testing.T, archive string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

package ociimage_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/ociimage"
)

// TestImportIntoContainerd imports an archive with the same command the cluster harness uses,
// `ctr -n k8s.io images import`, into a containerd of its own (temp root, state and socket),
// and checks that the image is named by its full reference and unpacks.
func TestImportIntoContainerd(t *testing.T) {
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		t.Fatal("containerd is not installed: apt-get install -y containerd")
	}
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		t.Fatal("ctr is not installed: apt-get install -y containerd")
	}
	if os.Geteuid() != 0 {
		t.Fatal("containerd needs root: run this test as root")
	}

	// A short base: the socket path must fit in sun_path (108 bytes).
	base, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	sock := filepath.Join(base, "c.sock")
	cfg := filepath.Join(base, "config.toml")
	// The CRI plugin is not needed to import and would start a CNI and streaming server.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(base, "root"), filepath.Join(base, "state"), sock, sock+".ttrpc")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(containerd, "--config", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("containerd log:\n%s", logs.String())
		}
	})

	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, ctr, append([]string{"--address", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	waitFor(t, 30*time.Second, func() error { _, err := run("version"); return err })

	spec := testSpec(t)
	spec.Arch = "" // the platform ctr unpacks for by default
	archive := filepath.Join(t.TempDir(), "demo.tar")
	digest, err := ociimage.Write(archive, spec)
	if err != nil {
		t.Fatal(err)
	}
	// native: overlayfs may not stack on the file system this test runs on.
	if out, err := run("-n", "k8s.io", "images", "import", "--snapshotter", "native", archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err := run("-n", "k8s.io", "images", "ls")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, testRef+" ") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("image %s not in containerd after import:\n%s", testRef, out)
	}
	if !strings.Contains(line, digest) {
		t.Errorf("image %s has another digest than %s:\n%s", testRef, digest, line)
	}
	if out, err := run("-n", "k8s.io", "images", "check"); err != nil || !strings.Contains(out, "complete") {
		t.Errorf("ctr images check: %v\n%s", err, out)
	}
}

// waitFor polls check until it succeeds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenReplacesAStaleSocketButNoOtherFile(t *testing.T) {
	dir, err := os.MkdirTemp("", "us-") // short: a Unix socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "sub", "s.sock")

	first, err := Listen(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v, %v; want 0660", fi.Mode().Perm(), err)
	}
	// A previous run's socket, left behind (its listener gone without unlinking it).
	first.(*net.UnixListener).SetUnlinkOnClose(false)
	first.Close()
	again, err := Listen(path, 0o600)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	again.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file, 0o600); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("over a regular file: %v; want a refusal", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("the regular file was replaced")
	}
}

package procs_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/procs"
)

func TestProcessLifecycle(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	p := &procs.Process{Name: "sh", Bin: "/bin/sh", Args: []string{"-c", "echo started; touch " + ready + "; exec sleep 60"},
		Log: filepath.Join(dir, "sh.log")}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitFor(10*time.Second, func() error { _, err := os.Stat(ready); return err }); err != nil {
		t.Fatal(err)
	}
	if !p.Running() || p.Pid() == 0 || p.Exited() != "" {
		t.Fatalf("running=%v pid=%d exited=%q", p.Running(), p.Pid(), p.Exited())
	}
	p.Stop(5 * time.Second)
	if p.Running() || !strings.Contains(p.Exited(), "started") {
		t.Fatalf("after Stop: running=%v exited=%q", p.Running(), p.Exited())
	}
	p.Stop(time.Second) // stopping a stopped process does nothing
}

func TestWaitForReportsExit(t *testing.T) {
	dir := t.TempDir()
	p := &procs.Process{Name: "false", Bin: "/bin/sh", Args: []string{"-c", "echo boom; exit 3"}, Log: filepath.Join(dir, "false.log")}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	err := p.WaitFor(10*time.Second, func() error { return errors.New("never ready") })
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v, want the exit with the log's tail", err)
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := procs.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, port := range ports {
		if seen[port] {
			t.Fatalf("port %d twice", port)
		}
		seen[port] = true
		l, err := net.Listen("tcp", procs.HostPort(port))
		if err != nil {
			t.Fatalf("port %d not free: %v", port, err)
		}
		l.Close()
	}
}

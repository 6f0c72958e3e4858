// Package e2e runs the whole suite as real processes — kms-adapter, mcp-sync, citadel and node
// agents, on ephemeral loopback ports and real Unix sockets — and drives it with real clients: an
// SDS client on go-control-plane types, and workloads that complete mTLS handshakes with what
// they were given.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// binDir holds the service binaries built once for the whole run.
var binDir string

func TestMain(m *testing.M) {
	if socket := os.Getenv(sidecarChildEnv); socket != "" {
		os.Exit(runSidecarChild(socket))
	}
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "portcullis-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		for svc, pkg := range map[string]string{
			stack.KMSAdapter: "./services/kms-adapter/cmd/kms-adapter", stack.MCPSync: "./services/mcp-sync/cmd/mcp-sync",
			stack.Citadel: "./services/citadel/cmd/citadel", stack.NodeAgent: "./services/nodeagent/cmd/nodeagent",
			stack.NATS: "./tools/cmd/natsd", "portcullisctl": "./tools/cmd/portcullisctl",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, svc), pkg)
			cmd.Dir = ".."
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", svc, err, out)
				return 1
			}
		}
		code := m.Run()
		for _, f := range benchCleanup {
			f()
		}
		return code
	}())
}

// startStack runs a stack on a private copy of examples/cluster and stops it when t ends. It
// fails the test if a service does not stop cleanly.
func startStack(t testing.TB) (*stack.Stack, string) {
	t.Helper()
	return startStackWith(t, nil)
}

// startStackWith is startStack with extra flags per service binary.
func startStackWith(t testing.TB, extra map[string][]string) (*stack.Stack, string) {
	t.Helper()
	return startStackOpts(t, stack.Options{Extra: extra})
}

// startStackOpts is startStack with options (BinDir, Dir, Manifests and Nodes are filled in).
func startStackOpts(t testing.TB, opts stack.Options) (*stack.Stack, string) {
	t.Helper()
	manifests := filepath.Join(t.TempDir(), "manifests")
	if err := os.CopyFS(manifests, os.DirFS("../examples/cluster")); err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir() paths can be long.
	dir, err := os.MkdirTemp("", "pc-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts.BinDir, opts.Dir, opts.Manifests, opts.Nodes = binDir, dir, manifests, []string{"node-a", "node-b"}
	s, err := stack.Start(ctx, opts)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			for _, n := range []string{stack.NATS, stack.KMSAdapter, stack.MCPSync, stack.Citadel, "nodeagent-node-a", "nodeagent-node-b"} {
				if b, err := os.ReadFile(filepath.Join(dir, "logs", n+".log")); err == nil {
					t.Logf("--- %s log:\n%s", n, tail(string(b), 30))
				}
			}
		}
		os.RemoveAll(dir)
	})
	return s, manifests
}

// pod returns a pod of examples/cluster.
func pod(t testing.TB, key string) stack.Pod {
	t.Helper()
	pods, err := stack.LoadPods("../examples/cluster")
	if err != nil {
		t.Fatal(err)
	}
	p, err := stack.FindPod(pods, key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fetch gets a pod's SVID from the agent of node over SDS, with a fresh token.
func fetch(t testing.TB, s *stack.Stack, node string, p stack.Pod) (*stack.SVID, error) {
	t.Helper()
	token, err := s.Token(p, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return stack.FetchSVID(context.Background(), s.Socket(node), sdsclient.Credential{Token: token}, "sidecar~"+p.Key())
}

func tail(s string, lines int) string {
	n := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			if n++; n > lines {
				return s[i+1:]
			}
		}
	}
	return s
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

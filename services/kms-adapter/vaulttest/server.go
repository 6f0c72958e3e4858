// Package vaulttest runs a real HashiCorp Vault server for tests (kms-adapter's and e2e's): the binary that
// `go tool task vault:build` builds from tools/vaultserver, started on ephemeral loopback ports,
// initialised and unsealed through its API, and stopped in t.Cleanup.
//
// It runs `vault server -config` rather than `server -dev`: dev mode derives its cluster port
// from the API port (+1), which collides between test processes running in parallel, and the
// restart test needs file storage that survives the process anyway. Initialising with one key
// share gives the unseal key and root token to the test directly.
package vaulttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
)

// EnvBinary names the Vault binary; the test task sets it. Without it the cached build in
// .cache/bin is used.
const EnvBinary = "PORTCULLIS_VAULT_BIN"

const (
	startTimeout = 60 * time.Second // a cold start under -race on 2 busy cores
	stopTimeout  = 15 * time.Second
)

// Options configures Start.
type Options struct {
	// Persistent keeps Vault's data in a file backend in a temp dir, so that Restart keeps the
	// mounts, roots and auth roles. The default is in-memory storage.
	Persistent bool
}

// Server is a running Vault.
type Server struct {
	Addr      string // http://127.0.0.1:<port>
	RootToken string
	UnsealKey string

	t       testing.TB
	bin     string
	dir     string
	config  string
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

// Binary returns the Vault binary, failing the test (never skipping) when it has not been built.
func Binary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv(EnvBinary); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s=%s: %v; build it with `go tool task vault:build`", EnvBinary, bin, err)
		}
		return bin
	}
	root, err := workspace.Root()
	if err != nil {
		t.Fatalf("finding the vault binary: %v; build it with `go tool task vault:build` or set %s", err, EnvBinary)
	}
	key, err := buildKey(root)
	if err != nil {
		t.Fatalf("finding the vault binary: %v", err)
	}
	bin := filepath.Join(root, ".cache", "bin", "vault-"+key)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("vault binary %s is missing: build it with `go tool task vault:build` (about 20 minutes the first time), or set %s", bin, EnvBinary)
	}
	return bin
}

// buildKey must match VAULT_KEY in Taskfile.yml: the first 16 hex digits of the SHA-256 of
// tools/vaultserver's go.mod, go.sum and main.go, concatenated.
func buildKey(root string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(root, "tools", "vaultserver", name))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Start runs a Vault server, initialises it with one key share and unseals it.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), dir: t.TempDir()}
	s.logPath = filepath.Join(s.dir, "vault.log")
	apiPort, clusterPort := freePort(t), freePort(t)
	s.Addr = "http://127.0.0.1:" + apiPort
	storage := `storage "inmem" {}`
	if opts.Persistent {
		storage = fmt.Sprintf(`storage "file" { path = %q }`, filepath.Join(s.dir, "data"))
	}
	s.config = filepath.Join(s.dir, "vault.hcl")
	hcl := fmt.Sprintf(`%s
listener "tcp" {
  address         = "127.0.0.1:%s"
  cluster_address = "127.0.0.1:%s"
  tls_disable     = true
}
api_addr      = %q
cluster_addr  = "https://127.0.0.1:%s"
disable_mlock = true
ui            = false
log_level     = "warn"
`, storage, apiPort, clusterPort, s.Addr, clusterPort)
	if err := os.WriteFile(s.config, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	s.start()
	init, err := s.anonClient().Sys().InitWithContext(t.Context(), &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("vault init: %v", err)
	}
	s.RootToken, s.UnsealKey = init.RootToken, init.Keys[0]
	s.Unseal()
	return s
}

func (s *Server) start() {
	s.t.Helper()
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(s.bin, "server", "-config="+s.config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+s.Addr)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		s.t.Fatalf("starting vault: %v", err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	// Any answer from sys/health (even "sealed" or "not initialised") means it listens.
	c := s.anonClient()
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-s.exited:
			s.t.Fatalf("vault exited during start:\n%s", s.Log())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Sys().HealthWithContext(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("vault not answering after %s: %v\n%s", startTimeout, err, s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL); the data of a Persistent server is kept.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Restart starts a stopped server again on the same ports and unseals it.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
	s.Unseal()
}

// Seal seals the vault: every request but health and unseal gets 503 until Unseal.
func (s *Server) Seal() {
	s.t.Helper()
	if err := s.Client().Sys().SealWithContext(s.t.Context()); err != nil {
		s.t.Fatalf("vault seal: %v", err)
	}
}

// Unseal unseals with the one key share.
func (s *Server) Unseal() {
	s.t.Helper()
	st, err := s.anonClient().Sys().UnsealWithContext(s.t.Context(), s.UnsealKey)
	if err != nil {
		s.t.Fatalf("vault unseal: %v", err)
	}
	if st.Sealed {
		s.t.Fatalf("vault still sealed after unseal")
	}
	// Wait for the core to become active: mounts are loaded after unseal returns.
	deadline := time.Now().Add(startTimeout)
	for {
		h, err := s.anonClient().Sys().HealthWithContext(s.t.Context())
		if err == nil && h.Initialized && !h.Sealed && !h.Standby {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("vault not active after unseal: %v %+v\n%s", err, h, s.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client returns a client with the root token.
func (s *Server) Client() *api.Client {
	s.t.Helper()
	c := s.anonClient()
	c.SetToken(s.RootToken)
	return c
}

func (s *Server) anonClient() *api.Client {
	s.t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	c.ClearToken()
	return c
}

// Log returns what the server printed, for failure messages.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(bytes.TrimSpace(b))
}

// WriteFile writes a secret (token, secret ID) into a 0600 file in the test's temp dir.
func WriteFile(t testing.TB, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// freePort returns a loopback port that was free a moment ago (Vault's config wants a number).
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strings.TrimPrefix(l.Addr().String(), "127.0.0.1:")
}

package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// repoRoot is where the service packages and examples/cluster are, from this package.
const repoRoot = "../../.."

// binDir holds the service binaries, built once for the run.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "sdsprobe-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		for bin, pkg := range map[string]string{
			stack.KMSAdapter: "./services/kms-adapter/cmd/kms-adapter", stack.MCPSync: "./services/mcp-sync/cmd/mcp-sync",
			stack.Citadel: "./services/citadel/cmd/citadel", stack.NodeAgent: "./services/nodeagent/cmd/nodeagent",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, bin), pkg)
			cmd.Dir = repoRoot
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", bin, err, out)
				return 1
			}
		}
		code := m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		return code
	}())
}

// The probes of these tests run on node-a of examples/cluster.
const node = "node-a"

// TestProbe runs probes against a real node agent (the whole stack as processes): they get
// their SVIDs over SDS, complete mTLS handshakes with each other through the status API, follow
// a root rotation and an agent restart on their open streams, and report a refused token.
func TestProbe(t *testing.T) {
	s := startStack(t)
	frontend := startProbe(t, s, podOf(t, "shop/frontend-0"))
	cart := startProbe(t, s, podOf(t, "shop/cart-0"))
	const frontendID, cartID = "spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/shop/sa/cart"

	t.Run("svid over sds", func(t *testing.T) {
		for p, want := range map[*probe]string{frontend: frontendID, cart: cartID} {
			st := waitStatus(t, p, "an svid", func(st status) bool { return st.SPIFFEID != "" })
			if st.SPIFFEID != want || st.Serial == "" || st.NotAfter == "" || len(st.BundleSHA256) != 1 ||
				st.Updates < 1 || st.LastError != "" {
				t.Errorf("status %+v, want %s with one root", st, want)
			}
			if code := get(t, p, "/readyz"); code != http.StatusOK {
				t.Errorf("%s: /readyz %d", want, code)
			}
		}
	})

	t.Run("handshake both ways", func(t *testing.T) {
		mustHandshake(t, frontend, cart, cartID)
		mustHandshake(t, cart, frontend, frontendID)
		if peers := getStatus(t, cart).Peers; !slices.Contains(peers, frontendID) {
			t.Errorf("cart's peers %q lack %s", peers, frontendID)
		}
		if peers := getStatus(t, frontend).Peers; !slices.Contains(peers, cartID) {
			t.Errorf("frontend's peers %q lack %s", peers, cartID)
		}
	})

	t.Run("root rotation is pushed", func(t *testing.T) {
		admin, conn, err := s.Admin()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		before := map[*probe]status{frontend: getStatus(t, frontend), cart: getStatus(t, cart)}
		prepared := rotate(t, admin, kmsv1.RotationStep_ROTATION_STEP_PREPARE)
		newRoot := fingerprint(t, prepared.GetNext().GetRoot())
		for _, p := range []*probe{frontend, cart} {
			st := waitStatus(t, p, "the next root in the bundle", func(st status) bool {
				return slices.Contains(st.BundleSHA256, newRoot) && len(st.BundleSHA256) == 2
			})
			if st.Updates <= before[p].Updates {
				t.Errorf("updates %d, was %d", st.Updates, before[p].Updates)
			}
		}
		rotate(t, admin, kmsv1.RotationStep_ROTATION_STEP_ACTIVATE)
		for _, p := range []*probe{frontend, cart} {
			waitStatus(t, p, "an svid issued under the new root", func(st status) bool {
				return st.Serial != before[p].Serial && st.SPIFFEID == before[p].SPIFFEID
			})
		}
		mustHandshake(t, frontend, cart, cartID)
		mustHandshake(t, cart, frontend, frontendID)
	})

	t.Run("agent restart: the probe reconnects", func(t *testing.T) {
		before := getStatus(t, frontend)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Restart(ctx, "nodeagent-"+node); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, frontend, "an update on a new stream", func(st status) bool {
			return st.Updates > before.Updates && st.LastError == ""
		})
		mustHandshake(t, frontend, cart, cartID)
	})

	t.Run("a refused -names stream leaves the svid alone", func(t *testing.T) {
		// examples/cluster has no KeySecrets: the agent answers NotFound, which ends the names'
		// stream only; the svid's stream is served as before.
		const missing = "key/shop/no-such-keysecret"
		p := startProbe(t, s, podOf(t, "shop/cart-0"), missing)
		waitStatus(t, p, "an svid", func(st status) bool { return st.SPIFFEID == cartID && st.LastError == "" })
		var ns namesStatus
		deadline := time.Now().Add(30 * time.Second)
		for ns = getNamesStatus(t, p); !strings.Contains(ns.ResourcesError, "NotFound"); ns = getNamesStatus(t, p) {
			if time.Now().After(deadline) {
				t.Fatalf("names status %+v, want a NotFound refusal of %s", ns, missing)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(ns.Resources) != 0 || ns.ResourcesUpdates != 0 || ns.ResourcesStreams != 0 {
			t.Errorf("a refused name was served: %+v", ns)
		}
		mustHandshake(t, p, frontend, frontendID)
	})

	t.Run("refused token", func(t *testing.T) {
		// frontend-1 runs on node-b: node-a's agent must refuse its token.
		stranger := startProbe(t, s, podOf(t, "shop/frontend-1"))
		st := waitStatus(t, stranger, "the refusal", func(st status) bool { return st.LastError != "" })
		if st.SPIFFEID != "" || st.Updates != 0 {
			t.Errorf("a refused probe holds an identity: %+v", st)
		}
		if code := get(t, stranger, "/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz %d without an svid, want 503", code)
		}
		if res := handshake(t, frontend, stranger); res.OK || res.Error == "" {
			t.Errorf("handshake with a probe without an svid: %+v", res)
		}
	})
}

func startStack(t *testing.T) *stack.Stack {
	t.Helper()
	manifests := filepath.Join(t.TempDir(), "manifests")
	if err := os.CopyFS(manifests, os.DirFS(filepath.Join(repoRoot, "examples", "cluster"))); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pc-") // Unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Options{BinDir: binDir, Dir: dir, Manifests: manifests, Nodes: []string{node}})
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
		os.RemoveAll(dir)
	})
	return s
}

func podOf(t *testing.T, key string) stack.Pod {
	t.Helper()
	pods, err := stack.LoadPods(filepath.Join(repoRoot, "examples", "cluster"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := stack.FindPod(pods, key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startProbe runs a probe in process for pod, with a token in a file, until the test ends.
func startProbe(t *testing.T, s *stack.Stack, pod stack.Pod, names ...string) *probe {
	t.Helper()
	token, err := s.Token(pod, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config{socket: s.Socket(node), tokenFile: tokenFile, resource: "default", nodeID: "sdsprobe~" + pod.Key(),
		listen: "127.0.0.1:0", httpListen: "127.0.0.1:0", names: names}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := newProbe(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("probe %s: %v", pod.Key(), err)
		}
		httpClient.CloseIdleConnections()
	})
	return p
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

func get(t *testing.T, p *probe, path string) int {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.httpLis.Addr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// getStatus is GET /status.
func getStatus(t *testing.T, p *probe) status {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.httpLis.Addr().String() + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// getNamesStatus is the -names part of GET /status.
func getNamesStatus(t *testing.T, p *probe) namesStatus {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.httpLis.Addr().String() + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st namesStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitStatus polls /status until cond holds (the agent pushes asynchronously).
func waitStatus(t *testing.T, p *probe, what string, cond func(status) bool) status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := getStatus(t, p)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: last status %+v", what, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// handshake asks from to run an mTLS handshake with to's mTLS listener.
func handshake(t *testing.T, from, to *probe) handshakeResult {
	t.Helper()
	resp, err := httpClient.Post("http://"+from.httpLis.Addr().String()+"/handshake?addr="+to.mtlsLis.Addr().String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res handshakeResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		t.Fatal(err)
	}
	if (resp.StatusCode == http.StatusOK) != res.OK {
		t.Errorf("POST /handshake: status %d with ok=%v", resp.StatusCode, res.OK)
	}
	return res
}

func mustHandshake(t *testing.T, from, to *probe, wantPeer string) {
	t.Helper()
	res := handshake(t, from, to)
	if !res.OK || res.PeerSPIFFEID != wantPeer || res.Error != "" {
		t.Fatalf("handshake: %+v, want ok with %s", res, wantPeer)
	}
}

func rotate(t *testing.T, c kmsv1.KMSAdminServiceClient, step kmsv1.RotationStep) *kmsv1.CAStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.RotateCA(ctx, &kmsv1.RotateCARequest{Step: step})
	if err != nil {
		t.Fatalf("rotate-ca %s: %v", step, err)
	}
	return st
}

func fingerprint(t *testing.T, der []byte) string {
	t.Helper()
	if _, err := x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

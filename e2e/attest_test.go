package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	attestv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/attest/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// TestAttestedNodeAgents runs node agents that start with nothing but a projected-style token
// (with the pod and node claims) and the control-plane CA bundle: each obtains its certificate
// from citadel's node attestation, then serves SDS with it.
func TestAttestedNodeAgents(t *testing.T) {
	s, _ := startStackOpts(t, stack.Options{AttestedAgents: true})

	for node, key := range map[string]string{"node-a": "shop/cart-0", "node-b": "shop/frontend-1"} {
		svid, err := fetch(t, s, node, pod(t, key))
		if err != nil {
			t.Fatalf("SDS from the attested agent of %s: %v", node, err)
		}
		if got := svid.Leaf().URIs[0].String(); !strings.HasSuffix(got, "/ns/shop/sa/"+pod(t, key).ServiceAccount) {
			t.Errorf("%s: SVID %s", key, got)
		}
	}
	if got := attestMetric(t, s, "issued"); got != "2" {
		t.Errorf("citadel counted %s attestations, want 2 (one per agent)", got)
	}

	conn := dialAttest(t, s)
	client := attestv1.NewNodeAttestationServiceClient(conn)
	csr := newAttestCSR(t)
	token := func(p stack.Pod, aud string, ttl time.Duration) string {
		tok, err := s.AttestToken(p, aud, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	cart := pod(t, "shop/cart-0") // a workload on node-a, not a node agent
	lying := stack.AgentPod("node-b")
	lying.Node = "node-a" // the pod runs on node-b; the token claims node-a

	for _, tc := range []struct {
		name  string
		token string
		code  codes.Code
		says  string
	}{
		{"workload audience", token(stack.AgentPod("node-a"), stack.TokenAudience, time.Hour), codes.Unauthenticated, "audience"},
		{"expired token", token(stack.AgentPod("node-a"), stack.AttestAudience, -5*time.Minute), codes.Unauthenticated, "expired"},
		{"workload's service account", token(cart, stack.AttestAudience, time.Hour), codes.PermissionDenied, "service account shop/cart"},
		{"pod not on the claimed node", token(lying, stack.AttestAudience, time.Hour), codes.PermissionDenied, `runs on node "node-b", not on node "node-a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := client.AttestNode(ctx, &attestv1.AttestNodeRequest{Token: tc.token, Csr: csr})
			wantCode(t, err, tc.code, tc.says)
		})
	}
	t.Run("agent that cannot attest yet", func(t *testing.T) { testAgentNotReadyUntilAttested(t, s) })
	if got := attestMetric(t, s, "Unauthenticated"); got != "2" {
		t.Errorf("Unauthenticated refusals counted: %s, want 2", got)
	}
	if got, _ := strconv.Atoi(attestMetric(t, s, "PermissionDenied")); got < 4 { // the 2 above, and the agent's retries
		t.Errorf("PermissionDenied refusals counted: %d, want at least 4", got)
	}
}

// dialAttest connects to citadel's attest listener as an agent does: no client certificate,
// trusting the control-plane CA.
func dialAttest(t *testing.T, s *stack.Stack) *grpc.ClientConn {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(s.CA().Certificate())
	conn, err := grpc.NewClient(s.AttestAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func newAttestCSR(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// attestMetric reads citadel's attestation counter for result from its /metrics.
func attestMetric(t *testing.T, s *stack.Stack, result string) string {
	t.Helper()
	return metric(t, s.Process(stack.Citadel), `portcullis_citadel_attest_requests_total{result="`+result+`"}`)
}

// metric reads one sample, named with its labels, from a service's /metrics ("0" if absent).
func metric(t testing.TB, p *stack.Process, sample string) string {
	t.Helper()
	resp, err := http.Get("http://" + p.Addr("admin") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return v
		}
	}
	return "0"
}

// TestAttestedAgentRenews runs attested agents with 1-minute certificates: each renews at half
// its life, and once its first certificate has expired, a new handshake (citadel restarted) works
// with the renewed one.
func TestAttestedAgentRenews(t *testing.T) {
	s, _ := startStackOpts(t, stack.Options{AttestedAgents: true, Extra: map[string][]string{stack.Citadel: {"-attest-ttl", "1m"}}})
	firstExpiry := time.Now().Add(time.Minute) // the first certificate was issued before this
	if _, err := fetch(t, s, "node-a", pod(t, "shop/cart-0")); err != nil {
		t.Fatal(err)
	}
	agent := s.Agent("node-a")
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(agent.Tail(), "node agent certificate renewed") || time.Now().Before(firstExpiry.Add(2*time.Second)) {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal, or the first certificate never expired:\n%s", agent.Tail())
		}
		time.Sleep(200 * time.Millisecond) // polling the log, not asserting
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Restart(ctx, stack.Citadel); err != nil {
		t.Fatal(err)
	}
	// frontend-0 was never fetched: the agent must reach citadel, over a new handshake, with the
	// renewed certificate (the first one has expired).
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if _, err = fetch(t, s, "node-a", pod(t, "shop/frontend-0")); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond) // citadel syncing its pods after the restart
	}
	if err != nil {
		t.Fatalf("SDS after citadel's restart: %v\n%s", err, agent.Tail())
	}
	if strings.Contains(agent.Tail(), "renewing the node agent certificate failed") {
		t.Errorf("a renewal failed:\n%s", agent.Tail())
	}
}

// testAgentNotReadyUntilAttested restarts node-b's agent with a token of another service account:
// it keeps retrying with backoff and is not ready; once the token file holds a good token (as when
// the kubelet refreshes it), the agent attests, opens its SDS socket and serves.
func testAgentNotReadyUntilAttested(t *testing.T, s *stack.Stack) {
	agent := s.Agent("node-b")
	if err := agent.Stop(); err != nil {
		t.Fatal(err)
	}
	wrong := stack.AgentPod("node-b")
	wrong.ServiceAccount = "default"
	writeToken := func(p stack.Pod) {
		tok, err := s.AttestToken(p, stack.AttestAudience, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.AttestTokenFile("node-b"), []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeToken(wrong)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.ResumeWaitingFor(ctx, "nodeagent-node-b", "admin"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two refused attempts", func() bool {
		return strings.Count(agent.Tail(), "node attestation failed; retrying") >= 2
	})
	if !strings.Contains(agent.Tail(), "service account portcullis/default") {
		t.Errorf("the agent's log does not say why it was refused:\n%s", agent.Tail())
	}
	code, body := getAdmin(t, agent.Addr("admin"), "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no control-plane certificate yet") {
		t.Fatalf("/readyz while attesting = %d %q, want 503 saying why", code, body)
	}
	if agent.Addr("sds") != "" {
		t.Fatal("the agent opened its SDS socket without a certificate")
	}

	writeToken(stack.AgentPod("node-b"))
	eventually(t, "the SDS socket after attestation", func() bool { return agent.Addr("sds") != "" })
	eventually(t, "readiness", func() bool { code, _ := getAdmin(t, agent.Addr("admin"), "/readyz"); return code == http.StatusOK })
	if _, err := fetch(t, s, "node-b", pod(t, "shop/frontend-1")); err != nil {
		t.Fatalf("SDS once attested: %v", err)
	}
}

func getAdmin(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

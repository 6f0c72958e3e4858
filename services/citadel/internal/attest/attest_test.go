package attest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	attestv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/attest/v1"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/attest"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	tokenIssuer = "https://kubernetes.default.svc.cluster.local"
	audience    = "portcullis-nodeagent"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// agentPod is a node agent's pod on node-a, as mcp-sync reports it.
var agentPod = &mcpv1.Pod{
	Name: "portcullis/agent-x1", Namespace: "portcullis", PodName: "agent-x1", Uid: "uid-agent-x1",
	NodeName: "node-a", ServiceAccount: "portcullis-nodeagent",
}

var agentWorkload = workloadtoken.Workload{Namespace: "portcullis", ServiceAccount: "portcullis-nodeagent",
	PodName: "agent-x1", PodUID: "uid-agent-x1", NodeName: "node-a", NodeUID: "uid-node-a"}

type harness struct {
	t       testing.TB
	ca      *servicetls.BootstrapCA
	tokens  *workloadtoken.Issuer
	pods    *mcpclient.Pods
	results *prometheus.CounterVec
	client  attestv1.NodeAttestationServiceClient
}

func newHarness(t testing.TB, caValidity, ttl time.Duration) *harness {
	t.Helper()
	ca, err := servicetls.NewBootstrapCA(td, caValidity)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(caCert, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caKey, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	caFiles, err := attest.LoadCAFiles(td, caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	citadelID, _ := servicetls.ServiceID(td, servicetls.Citadel)
	files, err := ca.Issue(dir, "citadel", citadelID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident, err := servicetls.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ca: ca, pods: mcpclient.NewPods(), results: metrics.NewAttest(prometheus.NewRegistry())}
	if h.tokens, err = workloadtoken.NewIssuer(tokenIssuer, nil); err != nil {
		t.Fatal(err)
	}
	verifier, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{Issuer: tokenIssuer, Audiences: []string{audience}, Keys: h.tokens.KeySet()})
	if err != nil {
		t.Fatal(err)
	}
	attestor, err := attest.New(attest.Config{TrustDomain: td, ServiceAccount: "portcullis/portcullis-nodeagent",
		Verifier: verifier, Pods: h.pods, CA: caFiles, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	srv := attest.NewGRPCServer(credentials.NewTLS(ident.ServerTLSWithoutClientAuth()),
		attest.NewServer(attestor, slog.New(slog.NewTextHandler(io.Discard, nil)), h.results))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })

	// The client has no certificate: it trusts the control-plane CA, nothing else.
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	h.client = attestv1.NewNodeAttestationServiceClient(conn)
	return h
}

func (h *harness) setPods(pods ...*mcpv1.Pod) {
	h.t.Helper()
	var res []*anypb.Any
	for _, p := range pods {
		a, err := anypb.New(p)
		if err != nil {
			h.t.Fatal(err)
		}
		res = append(res, a)
	}
	if err := h.pods.Apply(res); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) token(w workloadtoken.Workload, aud string) string {
	h.t.Helper()
	tok, err := h.tokens.Issue(w, []string{aud}, time.Hour)
	if err != nil {
		h.t.Fatal(err)
	}
	return tok
}

func newCSR(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The CSR asks for a name of its own choosing: citadel must ignore it.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"evil.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func (h *harness) attest(token string, csr []byte) (*attestv1.AttestNodeResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.client.AttestNode(ctx, &attestv1.AttestNodeRequest{Token: token, Csr: csr})
}

func TestAttestIssuesTheNodeAgentIdentity(t *testing.T) {
	h := newHarness(t, 365*24*time.Hour, 24*time.Hour)
	h.setPods(agentPod)
	key, csr := newCSR(t)
	resp, err := h.attest(h.token(agentWorkload, audience), csr)
	if err != nil {
		t.Fatalf("AttestNode: %v", err)
	}
	want := "spiffe://cluster.local/portcullis/nodeagent/node-a"
	if resp.GetSpiffeId() != want {
		t.Fatalf("spiffe_id = %s, want %s", resp.GetSpiffeId(), want)
	}
	leaf, err := x509.ParseCertificate(resp.GetCertChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "localhost" {
		t.Errorf("leaf names URIs %v DNS %v; want only %s (and localhost), never the CSR's names", leaf.URIs, leaf.DNSNames, want)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("leaf does not certify the CSR's key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(h.ca.Certificate())
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not chain to the control-plane CA: %v", err)
	}
	if life := time.Until(leaf.NotAfter); life > 24*time.Hour || life < 23*time.Hour {
		t.Errorf("leaf lives %s, want -attest-ttl (24h)", life)
	}
	if got := testutil.ToFloat64(h.results.WithLabelValues("issued")); got != 1 {
		t.Errorf("issued counter = %v, want 1", got)
	}
}

func TestAttestTTLCutAtCAExpiry(t *testing.T) {
	h := newHarness(t, 2*time.Hour, 24*time.Hour)
	h.setPods(agentPod)
	_, csr := newCSR(t)
	resp, err := h.attest(h.token(agentWorkload, audience), csr)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(resp.GetCertChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.NotAfter.After(h.ca.Certificate().NotAfter) {
		t.Fatalf("leaf valid until %v, past its CA (%v)", leaf.NotAfter, h.ca.Certificate().NotAfter)
	}
}

func TestAttestRefusals(t *testing.T) {
	h := newHarness(t, 365*24*time.Hour, 24*time.Hour)
	_, csr := newCSR(t)

	// Before the first pod list, citadel cannot tell where a pod runs.
	_, err := h.attest(h.token(agentWorkload, audience), csr)
	requireRefusal(t, "pods not synced", err, codes.Unavailable, "not yet synced")

	elsewhere := clonePod(agentPod)
	elsewhere.Name, elsewhere.PodName, elsewhere.Uid, elsewhere.NodeName = "portcullis/agent-y1", "agent-y1", "uid-agent-y1", "node-b"
	h.setPods(agentPod, elsewhere)

	expiredIssuer, err := workloadtoken.IssuerFromKey(tokenIssuer, h.tokens.Key(), clocktesting.NewFakePassiveClock(time.Now().Add(-3*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	expired, err := expiredIssuer.Issue(agentWorkload, []string{audience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherSA := agentWorkload
	otherSA.ServiceAccount = "default"
	otherNS := agentWorkload
	otherNS.Namespace = "shop"
	// The pod agent-y1 runs on node-b but its token claims node-a.
	claimsOtherNode := agentWorkload
	claimsOtherNode.PodName, claimsOtherNode.PodUID = "agent-y1", "uid-agent-y1"
	replaced := agentWorkload
	replaced.PodUID = "uid-of-a-deleted-pod"
	gone := agentWorkload
	gone.PodName, gone.PodUID = "agent-gone", "uid-gone"
	noNode := agentWorkload
	noNode.NodeName, noNode.NodeUID = "", ""

	for _, tc := range []struct {
		name  string
		token string
		csr   []byte
		code  codes.Code
		says  string
	}{
		{"no token", "", csr, codes.Unauthenticated, "no token"},
		{"wrong audience", h.token(agentWorkload, "portcullis"), csr, codes.Unauthenticated, "audience"},
		{"expired token", expired, csr, codes.Unauthenticated, "expired"},
		{"garbage token", "not-a-jwt", csr, codes.Unauthenticated, "malformed"},
		{"wrong service account", h.token(otherSA, audience), csr, codes.PermissionDenied, "service account portcullis/default"},
		{"wrong namespace", h.token(otherNS, audience), csr, codes.PermissionDenied, "shop/portcullis-nodeagent"},
		{"no node claim", h.token(noNode, audience), csr, codes.PermissionDenied, "names no node"},
		{"pod not on claimed node", h.token(claimsOtherNode, audience), csr, codes.PermissionDenied, `runs on node "node-b"`},
		{"replaced pod", h.token(replaced, audience), csr, codes.PermissionDenied, "uid"},
		{"unknown pod", h.token(gone, audience), csr, codes.PermissionDenied, "does not exist"},
		{"bad csr", h.token(agentWorkload, audience), []byte("not a csr"), codes.InvalidArgument, "invalid csr"},
		{"oversized token", strings.Repeat("a", 17<<10), csr, codes.InvalidArgument, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.attest(tc.token, tc.csr)
			requireRefusal(t, tc.name, err, tc.code, tc.says)
		})
	}
	for code, want := range map[codes.Code]float64{codes.Unavailable: 1, codes.Unauthenticated: 4, codes.PermissionDenied: 6, codes.InvalidArgument: 2} {
		if got := testutil.ToFloat64(h.results.WithLabelValues(code.String())); got != want {
			t.Errorf("refusals counted as %s = %v, want %v", code, got, want)
		}
	}
	if got := testutil.ToFloat64(h.results.WithLabelValues("issued")); got != 0 {
		t.Errorf("issued = %v after refusals only", got)
	}
}

func requireRefusal(t *testing.T, what string, err error, code codes.Code, says string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.Contains(st.Message(), says) {
		t.Fatalf("%s: got %v %q, want %v saying %q", what, st.Code(), st.Message(), code, says)
	}
}

func clonePod(p *mcpv1.Pod) *mcpv1.Pod {
	return &mcpv1.Pod{Name: p.Name, Namespace: p.Namespace, PodName: p.PodName, Uid: p.Uid, NodeName: p.NodeName, ServiceAccount: p.ServiceAccount}
}

func TestNewRefusesABadServiceAccount(t *testing.T) {
	_, err := attest.New(attest.Config{ServiceAccount: "no-slash"})
	if err == nil || !strings.Contains(err.Error(), "no-slash") {
		t.Fatalf("New: %v, want a refusal naming the value", err)
	}
}

// BenchmarkAttestNode measures one attestation over real gRPC and TLS: token signature check,
// pod lookup, CSR check and a P-256 signature.
func BenchmarkAttestNode(b *testing.B) {
	h := newHarness(b, 365*24*time.Hour, 24*time.Hour)
	h.setPods(agentPod)
	tok := h.token(agentWorkload, audience)
	_, csr := newCSR(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.attest(tok, csr); err != nil {
			b.Fatal(err)
		}
	}
}

package grpcapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

const cartID = "spiffe://example.org/ns/shop/sa/cart"

func TestCreateCertificateIssuesSPIFFEChain(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	csr, key := newCSR(t) // asks for spiffe://example.org/ns/kube-system/sa/admin
	resp, err := createCert(h.nodeClient("node-a"), h.token(cartWorkload), csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, resp.GetCertChain())
	if len(chain) != 2 {
		t.Fatalf("chain has %d certificates, want leaf and root", len(chain))
	}
	leaf, root := chain[0], chain[1]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != cartID || len(leaf.DNSNames) != 0 {
		t.Errorf("leaf SANs = %v %v, want only %s", leaf.URIs, leaf.DNSNames, cartID)
	}
	if !bytes.Equal(root.Raw, h.kms.Root.Raw) {
		t.Error("last certificate is not the root")
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, pub) {
		t.Error("leaf does not certify the CSR's key")
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 24*time.Hour {
		t.Errorf("leaf lifetime %s, want the 24h default", got)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: h.clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("chain does not verify: %v", err)
	}
	if got := testutil.ToFloat64(h.metrics.SuccessCertIssuance); got != 1 {
		t.Errorf("success count %v, want 1", got)
	}

	bundle, err := cav1.NewTrustBundleServiceClient(h.conn("nodeagent-bundle", mustID(servicetls.NodeAgentID(td, "node-a")))).
		GetTrustBundle(context.Background(), &cav1.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if bundle.GetTrustDomain() != "example.org" || len(bundle.GetRootCertificates()) != 1 || !bytes.Equal(bundle.GetRootCertificates()[0], root.Raw) {
		t.Errorf("trust bundle %s with %d roots does not hold the chain's root", bundle.GetTrustDomain(), len(bundle.GetRootCertificates()))
	}
}

func TestCreateCertificateRefusals(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	csr, _ := newCSR(t)

	pastClock := clocktesting.NewFakeClock(h.clock.Now().Add(-2 * time.Hour))
	pastIssuer, err := workloadtoken.IssuerFromKey(tokenIssuer, h.tokens.Key(), pastClock)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := pastIssuer.Issue(cartWorkload, []string{tokenAudience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherIssuer, err := workloadtoken.NewIssuer(tokenIssuer, h.clock)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := otherIssuer.Issue(cartWorkload, []string{tokenAudience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherUID, otherSA := cartWorkload, cartWorkload
	otherUID.PodUID = "uid-of-a-previous-cart-0"
	otherSA.ServiceAccount = "payments"
	unknownPod := cartWorkload
	unknownPod.PodName = "cart-9"
	tamperedCSR := []byte(csr)
	block, _ := pem.Decode(tamperedCSR)
	block.Bytes[len(block.Bytes)-5] ^= 0xff
	badSignature := string(pem.EncodeToMemory(block))

	cases := []struct {
		name  string
		node  string
		token string
		csr   string
		code  codes.Code
		msg   string
	}{
		{"pod on another node", "node-b", h.token(cartWorkload), csr, codes.PermissionDenied,
			"pod shop/cart-0 runs on node node-a, not on calling node node-b"},
		{"pod uid mismatch", "node-a", h.token(otherUID), csr, codes.PermissionDenied,
			"pod shop/cart-0 has uid uid-cart-0, but the token is bound to uid uid-of-a-previous-cart-0"},
		{"service account mismatch", "node-a", h.token(otherSA), csr, codes.PermissionDenied,
			"runs as service account cart, but the token is for service account payments"},
		{"unknown pod", "node-a", h.token(unknownPod), csr, codes.PermissionDenied, "pod shop/cart-9 does not exist"},
		{"expired token", "node-a", expired, csr, codes.Unauthenticated, "workload token expired at "},
		{"token signed by another key", "node-a", forged, csr, codes.Unauthenticated, "signature does not verify"},
		{"missing token", "node-a", "", csr, codes.Unauthenticated, `no workload token in "authorization" metadata`},
		{"csr not PEM", "node-a", h.token(cartWorkload), "not a csr", codes.InvalidArgument, "invalid csr: no PEM block"},
		{"csr of wrong PEM type", "node-a", h.token(cartWorkload), strings.ReplaceAll(csr, "CERTIFICATE REQUEST", "CERTIFICATE"),
			codes.InvalidArgument, `PEM block is "CERTIFICATE"`},
		{"two csrs", "node-a", h.token(cartWorkload), csr + csr, codes.InvalidArgument, "exactly one PEM block"},
		{"tampered csr", "node-a", h.token(cartWorkload), badSignature, codes.InvalidArgument, "invalid csr"},
		{"small rsa key", "node-a", h.token(cartWorkload), csrFor(t, smallRSA), codes.InvalidArgument, "RSA key of 1024 bits"},
		{"p-224 key", "node-a", h.token(cartWorkload), csrFor(t, p224), codes.InvalidArgument, "ECDSA curve P-224 not allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := createCert(h.nodeClient(tc.node), tc.token, tc.csr, 0)
			st := wantCode(t, err, tc.code)
			if !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("message %q does not contain %q", st.Message(), tc.msg)
			}
		})
	}
	if n := h.kms.Signs.Load(); n != 0 {
		t.Errorf("kms-adapter was asked to sign %d times for refused requests", n)
	}
	if got := testutil.ToFloat64(h.metrics.AuthenticationFailures); got != 3 {
		t.Errorf("authentication failures %v, want 3", got)
	}
	if got := testutil.ToFloat64(h.metrics.AuthorizationFailures); got != 4 {
		t.Errorf("authorization failures %v, want 4", got)
	}
	if got := testutil.ToFloat64(h.metrics.CSRParsingErrors); got != 6 {
		t.Errorf("csr parsing errors %v, want 6", got)
	}
}

func TestClientWithoutCertificateIsUnauthenticated(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	caPEM, err := os.ReadFile(h.dir + "/citadel/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	csr, _ := newCSR(t)
	_, err = createCert(authv1.NewIstioCertificateServiceClient(conn), h.token(cartWorkload), csr, 0)
	wantCode(t, err, codes.Unauthenticated)

	// Health stays open to callers without a certificate (probes, load balancers).
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check without a client certificate: %v", err)
	}
}

func TestOnlyNodeAgentsMayCall(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	csr, _ := newCSR(t)
	kmsIdentity := h.client("as-kms", mustID(servicetls.ServiceID(td, servicetls.KMSAdapter)))
	_, err := createCert(kmsIdentity, h.token(cartWorkload), csr, 0)
	wantCode(t, err, codes.PermissionDenied)
	if n := h.kms.Signs.Load(); n != 0 {
		t.Errorf("kms-adapter asked to sign %d times", n)
	}
}

func TestCacheHitSkipsKMSUntilHalfLife(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	csr, key := newCSR(t)
	first, err := createCert(c, tok, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A new CSR for the same key (as an agent that kept its key would send) also hits.
	again := csrFor(t, key)
	for range 3 {
		resp, err := createCert(c, tok, again, 0)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetCertChain()[0] != first.GetCertChain()[0] {
			t.Fatal("cache hit returned another certificate")
		}
	}
	if n := h.kms.Signs.Load(); n != 1 {
		t.Fatalf("%d kms calls, want 1 (the rest are cache hits)", n)
	}
	if got := testutil.ToFloat64(h.metrics.CacheHits); got != 3 {
		t.Errorf("cache hits %v, want 3", got)
	}

	otherKey, _ := newCSR(t)
	if _, err := createCert(c, tok, otherKey, 0); err != nil {
		t.Fatal(err)
	}
	if n := h.kms.Signs.Load(); n != 2 {
		t.Fatalf("%d kms calls after a new key, want 2", n)
	}

	h.clock.Step(12*time.Hour + time.Second) // past half of the 24h lifetime
	tok = h.token(cartWorkload)
	renewed, err := createCert(c, tok, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := h.kms.Signs.Load(); n != 3 || renewed.GetCertChain()[0] == first.GetCertChain()[0] {
		t.Fatalf("%d kms calls past half life, want 3 and a new certificate", n)
	}
}

func TestConcurrentIdenticalRequestsCoalesce(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.kms.Gate, h.kms.Started = make(chan struct{}), make(chan struct{}, 100)
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	csr, _ := newCSR(t)

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	leaves := make(chan string, n)
	for range n {
		wg.Go(func() {
			resp, err := createCert(c, tok, csr, 0)
			if err != nil {
				errs <- err
				return
			}
			leaves <- resp.GetCertChain()[0]
		})
	}
	// Hold the one kms-adapter call until every request has reached citadel, so that without
	// coalescing they would all miss the cache.
	<-h.kms.Started
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(h.metrics.CSRCount) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %v of %d requests reached citadel", testutil.ToFloat64(h.metrics.CSRCount), n)
		}
		time.Sleep(time.Millisecond)
	}
	close(h.kms.Gate)
	wg.Wait()
	close(errs)
	close(leaves)
	for err := range errs {
		t.Error(err)
	}
	if got := h.kms.Signs.Load(); got != 1 {
		t.Errorf("%d kms calls for %d identical requests, want 1", got, n)
	}
	first := <-leaves
	for l := range leaves {
		if l != first {
			t.Fatal("coalesced requests got different certificates")
		}
	}
}

func TestKMSDownServesCacheAndRefusesNewKeys(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	csr, _ := newCSR(t)
	first, err := createCert(c, tok, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	h.kmsSrv.Stop()

	resp, err := createCert(c, tok, csr, 0)
	if err != nil {
		t.Fatalf("cached certificate not served while kms-adapter is down: %v", err)
	}
	if resp.GetCertChain()[0] != first.GetCertChain()[0] {
		t.Error("served another certificate than the cached one")
	}

	newKey, _ := newCSR(t)
	_, err = createCert(c, tok, newKey, 0)
	if st := wantCode(t, err, codes.Unavailable); !strings.Contains(st.Message(), "kms-adapter unavailable: ") {
		t.Errorf("message %q does not say kms-adapter is unavailable", st.Message())
	}

	// Past half life the cached certificate would be renewed; with kms-adapter down the still
	// valid one is served instead of an error.
	h.clock.Step(13 * time.Hour)
	if resp, err = createCert(c, h.token(cartWorkload), csr, 0); err != nil {
		t.Fatalf("valid cached certificate not served past half life while kms-adapter is down: %v", err)
	}
	if resp.GetCertChain()[0] != first.GetCertChain()[0] {
		t.Error("served another certificate than the cached one")
	}
	if got := testutil.ToFloat64(h.metrics.CSRSignErrors); got != 1 {
		t.Errorf("sign errors %v, want 1", got)
	}
}

func TestTTLClamp(t *testing.T) {
	h := newHarness(t, harnessConfig{maxTTL: 48 * time.Hour})
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	for _, tc := range []struct {
		ask, want time.Duration
	}{
		{10 * 365 * 24 * time.Hour, 48 * time.Hour},
		{time.Hour, time.Hour},
		{0, 24 * time.Hour},
	} {
		csr, _ := newCSR(t)
		resp, err := createCert(c, tok, csr, tc.ask)
		if err != nil {
			t.Fatal(err)
		}
		leaf := parseChain(t, resp.GetCertChain())[0]
		if got := leaf.NotAfter.Sub(leaf.NotBefore); got != tc.want {
			t.Errorf("asked for %s, got a %s certificate, want %s", tc.ask, got, tc.want)
		}
	}
	csr, _ := newCSR(t)
	_, err := createCert(c, tok, csr, -time.Hour)
	wantCode(t, err, codes.InvalidArgument)
}

func TestShorterTTLIsNotAnsweredFromALongerCachedCert(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	csr, _ := newCSR(t)
	if _, err := createCert(c, tok, csr, 0); err != nil {
		t.Fatal(err)
	}
	resp, err := createCert(c, tok, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, resp.GetCertChain())[0]
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != time.Hour || h.kms.Signs.Load() != 2 {
		t.Errorf("asked for 1h after a 24h issuance: got %s with %d kms calls", got, h.kms.Signs.Load())
	}
}

func TestWaitsForPodsThenUnavailable(t *testing.T) {
	h := newHarness(t, harnessConfig{unsynced: true})
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	csr, _ := newCSR(t)

	errc := make(chan error, 1)
	go func() { _, err := createCert(c, tok, csr, 0); errc <- err }()
	waitFor(t, h.clock.HasWaiters) // the request is waiting for the first pod list
	h.clock.Step(testSyncWait)
	if st := wantCode(t, <-errc, codes.Unavailable); st.Message() != "pods not yet synced from mcp-sync" {
		t.Errorf("message %q", st.Message())
	}

	go func() { _, err := createCert(c, tok, csr, 0); errc <- err }()
	waitFor(t, h.clock.HasWaiters)
	h.setPods(cartPod, &mcpv1.Pod{Name: "shop/other", Namespace: "shop", PodName: "other", Uid: "u", NodeName: "node-b", ServiceAccount: "x"})
	if err := <-errc; err != nil {
		t.Fatalf("request waiting for the pod list failed once it arrived: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

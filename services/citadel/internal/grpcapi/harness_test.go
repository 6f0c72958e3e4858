package grpcapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/issuer"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/jwtbundle"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/kmstest"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/revocations"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/trustbundle"
)

const (
	tokenIssuer   = "https://kubernetes.default.svc"
	tokenAudience = "portcullis"
	testSyncWait  = 10 * time.Second // only ever elapses on the fake clock
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type harnessConfig struct {
	maxTTL   time.Duration
	unsynced bool // do not feed pods before serving
	// revocationsUnloaded: serve before the revocation state is loaded from kms-adapter.
	revocationsUnloaded bool
	// nodeSignRate and nodeSignBurst limit each node's signatures and JWT mints (0: no limit).
	nodeSignRate  float64
	nodeSignBurst int
}

// harness is a citadel gRPC server on 127.0.0.1:0 with real mTLS, a test kms-adapter behind real
// mTLS, real workload tokens and a pod view fed the way mcpclient.Watch feeds it.
type harness struct {
	t       testing.TB
	logs    syncBuffer // citadel's log
	dir     string
	ca      *servicetls.BootstrapCA
	clock   *clocktesting.FakeClock
	tokens  *workloadtoken.Issuer
	pods    *mcpclient.Pods
	kms     *kmstest.Server
	kmsSrv  *grpc.Server
	metrics *metrics.Metrics
	iss     *issuer.Issuer
	revoked *revocations.Source
	addr    string

	hc         harnessConfig
	citadelID  *servicetls.Identity
	kmsClient  kmsv1.KeyManagementServiceClient
	kmsJWT     kmsv1.JWTServiceClient
	jwtBundles *jwtbundle.Source
}

var cartPod = &mcpv1.Pod{
	Name: "shop/cart-0", Namespace: "shop", PodName: "cart-0", Uid: "uid-cart-0",
	NodeName: "node-a", ServiceAccount: "cart",
}

var cartWorkload = workloadtoken.Workload{Namespace: "shop", PodName: "cart-0", PodUID: "uid-cart-0", ServiceAccount: "cart"}

func newHarness(t testing.TB, hc harnessConfig) *harness {
	t.Helper()
	if hc.maxTTL == 0 {
		hc.maxTTL = 2160 * time.Hour
	}
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: t.TempDir(), ca: ca, clock: clocktesting.NewFakeClock(time.Now()), pods: mcpclient.NewPods()}
	if h.tokens, err = workloadtoken.NewIssuer(tokenIssuer, h.clock); err != nil {
		t.Fatal(err)
	}
	// The real kms-adapter is exercised by the e2e suite; see package kmstest.
	h.kms = kmstest.New(t, td, h.clock)
	kmsAddr, kmsSrv := h.kms.Serve(t, h.identity("kms-adapter", mustID(servicetls.ServiceID(td, servicetls.KMSAdapter))))
	h.kmsSrv = kmsSrv
	if !hc.unsynced {
		h.setPods(cartPod)
	}

	h.hc = hc
	h.citadelID = h.identity("citadel", mustID(servicetls.ServiceID(td, servicetls.Citadel)))
	kmsConn, err := grpc.NewClient(kmsAddr, grpc.WithTransportCredentials(
		h.citadelID.ClientCredentials(mustID(servicetls.ServiceID(td, servicetls.KMSAdapter)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kmsConn.Close() })
	h.kmsClient = kmsv1.NewKeyManagementServiceClient(kmsConn)
	h.kmsJWT = kmsv1.NewJWTServiceClient(kmsConn)
	h.startCitadel()
	return h
}

// startCitadel serves a new citadel (issuer, trust bundle and revocation state) on a new address,
// as a restarted process would be: nothing of the previous one is kept but the pod view.
func (h *harness) startCitadel() {
	t := h.t
	t.Helper()
	verifier, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{
		Issuer: tokenIssuer, Audiences: []string{tokenAudience}, Keys: h.tokens.KeySet(), Clock: h.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(&h.logs, nil))
	h.metrics = metrics.New(prometheus.NewRegistry())
	bundles := trustbundle.New(trustbundle.Config{KMS: h.kmsClient, Refresh: time.Minute, Clock: h.clock, Logger: logger})
	var iss *issuer.Issuer
	h.revoked = revocations.New(revocations.Config{KMS: h.kmsClient, Refresh: time.Minute, Clock: h.clock, Logger: logger,
		OnRevoked: func(id spiffeid.ID) { iss.Forget(id) }})
	iss, err = issuer.New(issuer.Config{
		TrustDomain: td, Pods: h.pods, Verifier: verifier, KMS: h.kmsClient, Revocations: h.revoked, Roots: bundles.Roots,
		DefaultTTL: 24 * time.Hour, MaxTTL: h.hc.maxTTL, CacheSize: 1000, SyncWait: testSyncWait,
		JWTKMS: h.kmsJWT, JWTDefaultTTL: 5 * time.Minute, JWTMaxTTL: time.Hour,
		NodeSignRate: h.hc.nodeSignRate, NodeSignBurst: h.hc.nodeSignBurst,
		Clock: h.clock, Metrics: h.metrics, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.iss = iss
	if !h.hc.revocationsUnloaded {
		h.refreshRevocations()
	}
	h.jwtBundles = jwtbundle.New(jwtbundle.Config{TrustDomain: td, KMS: h.kmsJWT, Refresh: time.Minute, Clock: h.clock, Logger: logger})
	srv := NewGRPCServer(ServerCredentials(h.citadelID, h.metrics, logger),
		New(Config{Issuer: iss, Bundles: bundles, JWTIssuer: iss, JWTBundles: h.jwtBundles, Logger: logger, Metrics: h.metrics}), health.NewServer())
	h.addr = serve(t, srv)
}

// refreshRevocations fetches the revocation state now, as an event or the poll would.
func (h *harness) refreshRevocations() {
	h.t.Helper()
	if err := h.revoked.Refresh(context.Background()); err != nil {
		h.t.Fatal(err)
	}
}

func serve(t testing.TB, srv *grpc.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func (h *harness) identity(name string, id spiffeid.ID) *servicetls.Identity {
	h.t.Helper()
	files, err := h.ca.Issue(filepath.Join(h.dir, name), name, id, time.Hour)
	if err != nil {
		h.t.Fatal(err)
	}
	ident, err := servicetls.Load(files)
	if err != nil {
		h.t.Fatal(err)
	}
	return ident
}

// setPods replaces the pod view, as a state-of-the-world update from mcp-sync would.
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

// client dials citadel as the given control-plane identity.
func (h *harness) client(name string, id spiffeid.ID) authv1.IstioCertificateServiceClient {
	return authv1.NewIstioCertificateServiceClient(h.conn(name, id))
}

func (h *harness) conn(name string, id spiffeid.ID) *grpc.ClientConn {
	h.t.Helper()
	ident := h.identity(name, id)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(
		ident.ClientCredentials(mustID(servicetls.ServiceID(td, servicetls.Citadel)))))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func (h *harness) nodeClient(node string) authv1.IstioCertificateServiceClient {
	return h.client("nodeagent-"+node, mustID(servicetls.NodeAgentID(td, node)))
}

func (h *harness) token(w workloadtoken.Workload) string {
	h.t.Helper()
	tok, err := h.tokens.Issue(w, []string{tokenAudience}, time.Hour)
	if err != nil {
		h.t.Fatal(err)
	}
	return tok
}

func createCert(c authv1.IstioCertificateServiceClient, token, csr string, validity time.Duration) (*authv1.IstioCertificateResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, workloadtoken.GRPCMetadataKey, "Bearer "+token)
	}
	return c.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csr, ValidityDuration: int64(validity / time.Second)})
}

// newCSR makes a key and a CSR for it that asks for names citadel must ignore.
func newCSR(t testing.TB) (string, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return csrFor(t, key), key
}

func csrFor(t testing.TB, key crypto.Signer) string {
	t.Helper()
	evil, _ := url.Parse("spiffe://example.org/ns/kube-system/sa/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "admin"}, URIs: []*url.URL{evil}, DNSNames: []string{"admin.kube-system"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func parseChain(t testing.TB, chain []string) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for i, p := range chain {
		block, rest := pem.Decode([]byte(p))
		if block == nil || block.Type != "CERTIFICATE" || len(rest) != 0 {
			t.Fatalf("chain[%d] is not one PEM certificate", i)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return certs
}

func mustID(id spiffeid.ID, err error) spiffeid.ID {
	if err != nil {
		panic(err)
	}
	return id
}

func wantCode(t testing.TB, err error, code codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
	return st
}

package sds_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/keysecrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sdslimits"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

const (
	nodeName    = "node-a"
	tokenIssuer = "https://tokens.test"
	audience    = "portcullis"
	certTTL     = time.Hour
)

var (
	trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	// The pods of the fixture: cart and web run on this node; remote is in the view but runs
	// elsewhere; ghost is in no view at all.
	cart   = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-1", PodUID: "uid-cart-1"}
	web    = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-web-1"}
	remote = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-2", PodUID: "uid-cart-2"}
	ghost  = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-3", PodUID: "uid-cart-3"}

	cartID = spiffeid.RequireFromSegments(trustDomain, "ns", "shop", "sa", "cart")
	webID  = spiffeid.RequireFromSegments(trustDomain, "ns", "shop", "sa", "web")
)

// harness is a node agent's SDS side as the app wires it (real identity.Authenticator, real
// mcpclient.Pods, real secrets.Manager, real sds.Server on a real Unix socket), with the CA
// replaced by testCA and time by a FakeClock.
type harness struct {
	clk     *testingclock.FakeClock
	ca      *testCA
	issuer  *workloadtoken.Issuer
	pods    *mcpclient.Pods
	manager *secrets.Manager
	secrets *secretsSpy
	auth    *authSpy
	obs     *observer
	socket  string
	client  *sdsclient.Client
	// keys is the node's KeySecret view, served when options.keySecrets is set.
	keys *mcpclient.KeySecrets
}

type options struct {
	// keySecrets serves KeySecrets from h.keys, with keySecretMaxBytes (0: the default).
	keySecrets        bool
	keySecretMaxBytes int

	unsynced bool              // do not apply the pod view yet
	limits   *sdslimits.Config // serve with these limits (on the harness's clock and observer)
	// peer, if set, is what every connection says of its caller (as a per-pod socket or peer
	// credentials would), and silent streams are resumed after resumeAfter.
	peer        *identity.Peer
	resumeAfter time.Duration
	gateways    sds.GatewayCertificates // serves the kubernetes:// names
}

func newHarness(tb testing.TB, opt options) *harness {
	tb.Helper()
	// Registered first, so it runs after every other cleanup has stopped the server. Goroutines
	// that predate the harness (the testing package's own, under a benchmark) are not ours.
	before := goleak.IgnoreCurrent()
	tb.Cleanup(func() { goleak.VerifyNone(tb, before) })

	clk := testingclock.NewFakeClock(time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC))
	issuer, err := workloadtoken.NewIssuer(tokenIssuer, clk)
	if err != nil {
		tb.Fatal(err)
	}
	verifier, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{
		Issuer: tokenIssuer, Audiences: []string{audience}, Keys: issuer.KeySet(), Clock: clk,
	})
	if err != nil {
		tb.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	h := &harness{clk: clk, ca: newTestCA(tb, clk), issuer: issuer, pods: mcpclient.NewPods(),
		obs: &observer{pushes: map[string]int{}, limitRefused: map[string]int{}}}
	h.manager = secrets.New(secrets.Config{
		Signer: h.ca, Bundles: h.ca, Clock: clk, Logger: logger, Observe: nopSecretsObserver{},
		TTL: certTTL, KeyType: secrets.ECDSAP256, Refresh: time.Minute,
	})
	h.secrets = &secretsSpy{Manager: h.manager}
	h.auth = &authSpy{entered: make(chan struct{}, 1), inner: &identity.Authenticator{
		Mode: identity.ModeToken, Verifier: verifier, Pods: h.pods, NodeName: nodeName, TrustDomain: trustDomain,
	}}
	if !opt.unsynced {
		h.syncPods(tb)
	}

	cfg := sds.Config{Auth: h.auth, Secrets: h.secrets, Logger: logger, Observe: h.obs, Gateways: opt.gateways}
	if opt.peer != nil {
		p := *opt.peer
		cfg.Peer = func(context.Context) identity.Peer { return p }
		cfg.ResumeAfter, cfg.Remembered, cfg.Started = opt.resumeAfter, h.manager, sdslimits.Started
	}
	if opt.keySecrets {
		h.keys = mcpclient.NewKeySecrets()
		cfg.KeySecrets = keysecrets.New(keysecrets.Config{KeySecrets: h.keys, Pods: h.pods, MaxBytes: opt.keySecretMaxBytes})
	}
	var opts []grpc.ServerOption
	if opt.limits != nil {
		lc := *opt.limits
		lc.Clock, lc.Observer, lc.Logger = clk, h.obs, logger
		limits, err := sdslimits.New(lc)
		if err != nil {
			tb.Fatal(err)
		}
		cfg.Callers, opts = limits, limits.ServerOptions()
	}
	srv := grpc.NewServer(opts...)
	secretv3.RegisterSecretDiscoveryServiceServer(srv, sds.New(cfg))
	h.socket = filepath.Join(tb.TempDir(), "sds.sock")
	if len(h.socket) > 100 {
		tb.Fatalf("socket path %s too long for a Unix socket; shorten the test name", h.socket)
	}
	lis, err := net.Listen("unix", h.socket)
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	h.client, err = sdsclient.Dial(h.socket)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		h.client.Close()
		srv.Stop()
		if err := <-served; err != nil {
			tb.Errorf("serve: %v", err)
		}
	})
	return h
}

// syncPods delivers this node's pod list as mcp-sync would (anypb-wrapped mcpv1.Pod).
func (h *harness) syncPods(tb testing.TB) {
	tb.Helper()
	var res []*anypb.Any
	for _, p := range []struct {
		w    workloadtoken.Workload
		node string
	}{{cart, nodeName}, {web, nodeName}, {remote, "node-b"}} {
		a, err := anypb.New(&mcpv1.Pod{
			Name: p.w.PodKey(), Namespace: p.w.Namespace, PodName: p.w.PodName, Uid: p.w.PodUID,
			NodeName: p.node, ServiceAccount: p.w.ServiceAccount,
		})
		if err != nil {
			tb.Fatal(err)
		}
		res = append(res, a)
	}
	if err := h.pods.Apply(res); err != nil {
		tb.Fatal(err)
	}
}

func (h *harness) token(tb testing.TB, w workloadtoken.Workload) string {
	tb.Helper()
	tok, err := h.issuer.Issue(w, []string{audience}, 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func (h *harness) cred(tb testing.TB, w workloadtoken.Workload) sdsclient.Credential {
	return sdsclient.Credential{Token: h.token(tb, w)}
}

// renewalPoint moves the clock past the renewal point of leaf (56% of its lifetime; renewal
// happens within [45%, 55%]).
func (h *harness) renewalPoint(leaf *x509.Certificate) {
	h.clk.SetTime(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 56 / 100))
}

// testCtx bounds every wait of a test.
func testCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// verified checks a default-like secret against ROOTCA the way a peer would: the key matches the
// chain, the leaf names want, and the presented chain verifies to the served roots.
func (h *harness) verified(tb testing.TB, got map[string]*tlsv3.Secret, certName string, want spiffeid.ID) *x509.Certificate {
	tb.Helper()
	if got[certName] == nil || got[sds.RootCAName] == nil {
		tb.Fatalf("response holds %v, want %q and %q", slices.Sorted(maps.Keys(got)), certName, sds.RootCAName)
	}
	kp, err := sdsclient.Certificate(got[certName]) // fails unless the key matches the leaf
	if err != nil {
		tb.Fatal(err)
	}
	leaf := kp.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want.String() {
		tb.Fatalf("leaf URI SANs %v, want %s", leaf.URIs, want)
	}
	if len(kp.Certificate) != 2 {
		tb.Fatalf("presented chain has %d certificates, want leaf and intermediate (the root travels in ROOTCA)", len(kp.Certificate))
	}
	roots, err := sdsclient.Roots(got[sds.RootCAName])
	if err != nil {
		tb.Fatal(err)
	}
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, der := range kp.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: inter, CurrentTime: h.clk.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		tb.Fatalf("served chain does not verify to ROOTCA: %v", err)
	}
	return leaf
}

func requireCode(tb testing.TB, err error, want codes.Code) {
	tb.Helper()
	if got := status.Code(err); got != want {
		tb.Fatalf("got %v (%v), want code %v", got, err, want)
	}
}

func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// authSpy is the real Authenticator, telling the test when a request reached it.
type authSpy struct {
	inner   *identity.Authenticator
	entered chan struct{}
}

func (a *authSpy) Authenticate(ctx context.Context, ev identity.Evidence) (identity.Caller, error) {
	select {
	case a.entered <- struct{}{}:
	default:
	}
	return a.inner.Authenticate(ctx, ev)
}

// secretsSpy is the real Manager, counting how often the server builds a certificate resource, so
// that a test can tell when a request (an ACK) has been handled.
type secretsSpy struct {
	*secrets.Manager
	mu    sync.Mutex
	calls int
}

func (s *secretsSpy) Certificate(ctx context.Context, id spiffeid.ID, cred secrets.Credential) (*secrets.Certificate, error) {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	return s.Manager.Certificate(ctx, id, cred)
}

func (s *secretsSpy) certificateCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// observer records what the SDS server reports.
type observer struct {
	mu      sync.Mutex
	open    int
	pushes  map[string]int
	nacks   int
	refused []codes.Code

	limitRefused map[string]int // by reason
	unauth       int            // streams waiting for their first request
	resumed      int
}

func (o *observer) LimitRefused(reason string) { o.do(func() { o.limitRefused[reason]++ }) }
func (o *observer) Unauthenticated(delta int)  { o.do(func() { o.unauth += delta }) }
func (o *observer) Resumed()                   { o.do(func() { o.resumed++ }) }
func (o *observer) resumedStreams() (n int)    { o.do(func() { n = o.resumed }); return n }
func (o *observer) limitRefusals(reason string) (n int) {
	o.do(func() { n = o.limitRefused[reason] })
	return n
}
func (o *observer) unauthenticated() (n int) { o.do(func() { n = o.unauth }); return n }
func (o *observer) openStreams() (n int)     { o.do(func() { n = o.open }); return n }

func (o *observer) StreamOpened()                 { o.do(func() { o.open++ }) }
func (o *observer) StreamClosed()                 { o.do(func() { o.open-- }) }
func (o *observer) Pushed(name string)            { o.do(func() { o.pushes[name]++ }) }
func (o *observer) Nacked([]string, string)       { o.do(func() { o.nacks++ }) }
func (o *observer) Refused(code codes.Code)       { o.do(func() { o.refused = append(o.refused, code) }) }
func (o *observer) do(f func())                   { o.mu.Lock(); defer o.mu.Unlock(); f() }
func (o *observer) nackCount() (n int)            { o.do(func() { n = o.nacks }); return n }
func (o *observer) pushCount(name string) (n int) { o.do(func() { n = o.pushes[name] }); return n }

type nopSecretsObserver struct{}

func (nopSecretsObserver) Issued(spiffeid.ID, *x509.Certificate, time.Duration) {}
func (nopSecretsObserver) IssueFailed(spiffeid.ID, error)                       {}
func (nopSecretsObserver) Dropped(spiffeid.ID)                                  {}
func (nopSecretsObserver) BundleChanged([]*x509.Certificate)                    {}

// testCA implements secrets.Signer and secrets.BundleSource in process: it really signs the CSR
// with crypto/x509 under an intermediate and returns leaf, intermediate, root. It counts calls and
// can be told to fail or to certify the wrong key. (A copy of the one in the secrets tests; test
// files cannot be shared across packages.) The real citadel is exercised by the e2e suite.
type testCA struct {
	clk clock.PassiveClock

	mu        sync.Mutex
	root      *x509.Certificate
	inter     *x509.Certificate
	interKey  crypto.Signer
	signCalls int
	failWith  error
	wrongKey  bool
}

func newTestCA(tb testing.TB, clk clock.PassiveClock) *testCA {
	tb.Helper()
	now := clk.Now()
	rootKey, interKey := genKey(tb), genKey(tb)
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	root := mustCert(tb, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	inter := mustCert(tb, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign,
	}, root, interKey.Public(), rootKey)
	return &testCA{clk: clk, root: root, inter: inter, interKey: interKey}
}

func (ca *testCA) set(f func(*testCA)) { ca.mu.Lock(); defer ca.mu.Unlock(); f(ca) }
func (ca *testCA) signs() (n int)      { ca.set(func(ca *testCA) { n = ca.signCalls }); return n }

func (ca *testCA) Sign(_ context.Context, csrPEM []byte, _ secrets.Credential, ttl time.Duration) ([]*x509.Certificate, error) {
	ca.mu.Lock()
	ca.signCalls++
	failWith, wrongKey := ca.failWith, ca.wrongKey
	ca.mu.Unlock()
	if failWith != nil {
		return nil, failWith
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.Join(secrets.ErrRejected, errors.New("not a PEM csr"))
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		return nil, errors.Join(secrets.ErrRejected, errors.New("bad csr"))
	}
	pub := csr.PublicKey
	if wrongKey {
		pub = genKeyNoTB().Public()
	}
	now := ca.clk.Now()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, URIs: csr.URIs, NotBefore: now, NotAfter: now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ca.inter, pub, ca.interKey)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, ca.inter, ca.root}, nil
}

func (ca *testCA) TrustBundle(context.Context) ([]*x509.Certificate, uint64, error) {
	return []*x509.Certificate{ca.root}, 1, nil
}

func genKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func genKeyNoTB() *ecdsa.PrivateKey {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // crypto/rand does not fail
	return k
}

func mustCert(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// leafOf decodes a tls_certificate resource and returns its leaf.
func leafOf(tb testing.TB, res *anypb.Any) *x509.Certificate {
	tb.Helper()
	sec := &tlsv3.Secret{}
	if err := res.UnmarshalTo(sec); err != nil {
		tb.Fatal(err)
	}
	kp, err := sdsclient.Certificate(sec)
	if err != nil {
		tb.Fatal(err)
	}
	return kp.Leaf
}

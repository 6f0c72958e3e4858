package workloadapi_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/citadelclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/peercred"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/workloadapi"
)

const (
	nodeName    = "node-a"
	tokenIssuer = "https://tokens.test"
	audience    = "portcullis"
	certTTL     = time.Hour
	jwtTTL      = 5 * time.Minute
)

var (
	trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	// cart and web run on this node, each with a per-pod socket; ghost is in no view.
	cart  = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-1", PodUID: "1b0b8f8e-0c6e-4c39-9d5e-0a1f2b3c4d01"}
	web   = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "web", PodName: "web-1", PodUID: "1b0b8f8e-0c6e-4c39-9d5e-0a1f2b3c4d02"}
	ghost = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-3", PodUID: "1b0b8f8e-0c6e-4c39-9d5e-0a1f2b3c4d03"}

	cartID = spiffeid.RequireFromSegments(trustDomain, "ns", "shop", "sa", "cart")
	webID  = spiffeid.RequireFromSegments(trustDomain, "ns", "shop", "sa", "web")
)

// harness is the agent's Workload API as the app wires it: real identity.Authenticator, real
// mcpclient.Pods, real secrets.Manager, real citadelclient against a fake citadel JWT service
// (a real gRPC server minting real ES256 JWTs), the real server on real Unix sockets: a shared
// socket (token evidence) and a per-pod socket each for cart and web (socket evidence, as the
// CSI driver's). The CA is testCA; the agent's clock is a FakeClock that starts at the real time,
// so that what go-spiffe checks against the real time (TLS handshakes, JWT expiry) holds.
type harness struct {
	clk        *testingclock.FakeClock
	ca         *testCA
	issuer     *workloadtoken.Issuer
	pods       *mcpclient.Pods
	manager    *secrets.Manager
	citadel    *fakeCitadel
	bundles    *workloadapi.JWTBundles
	namespaces *workloadapi.Namespaces
	server     *workloadapi.Server

	shared     string            // the shared socket
	podSocket  map[string]string // pod uid → its socket
	httpSocket string            // the HTTP API on the shared socket's terms
	httpPod    map[string]string // pod uid → its HTTP socket
}

type options struct {
	attributes *workloadapi.AttributesConfig // nil: the default
	callers    workloadapi.CallerLimiter
	observe    workloadapi.Observer
}

func newHarness(tb testing.TB, opt options) *harness {
	tb.Helper()
	before := goleak.IgnoreCurrent()
	tb.Cleanup(func() {
		// net/http lingers up to 500ms on a connection it closes after an oversized body
		// (a bounded sleep of its own, not a goroutine of ours).
		goleak.VerifyNone(tb, before, goleak.IgnoreAnyFunction("net/http.(*conn).closeWriteAndWait"))
	})

	clk := testingclock.NewFakeClock(time.Now())
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
		namespaces: workloadapi.NewNamespaces(), podSocket: map[string]string{}, httpPod: map[string]string{}}
	h.manager = secrets.New(secrets.Config{
		Signer: h.ca, Bundles: h.ca, Clock: clk, Logger: logger, Observe: nopSecretsObserver{},
		TTL: certTTL, KeyType: secrets.ECDSAP256, Refresh: time.Minute,
	})
	h.syncPods(tb)
	if err := h.namespaces.Apply([]*anypb.Any{mustAny(tb, &mcpv1.Namespace{
		Name: "shop", Labels: map[string]string{"portcullis.dev/tenant": "acme", "app.kubernetes.io/part-of": "store"}})}); err != nil {
		tb.Fatal(err)
	}
	h.citadel = newFakeCitadel(tb, verifier, h.pods)
	conn, err := grpc.NewClient(h.citadel.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	citadel := citadelclient.New(conn)

	attrCfg := workloadapi.AttributesConfig{Rules: []workloadapi.AttributeRule{{Path: workloadapi.DefaultPathTemplate,
		NamespaceLabels: map[string]string{"tenant": "portcullis.dev/tenant", "app": "app.kubernetes.io/part-of"}}}}
	if opt.attributes != nil {
		attrCfg = *opt.attributes
	}
	attrs, err := workloadapi.NewAttributes(attrCfg, trustDomain, h.namespaces)
	if err != nil {
		tb.Fatal(err)
	}
	h.bundles = workloadapi.NewJWTBundles(citadel, trustDomain, time.Hour, logger)
	if err := h.bundles.Refresh(testCtx(tb)); err != nil {
		tb.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "wapi") // short: a Unix socket path has at most 107 bytes
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	h.shared = filepath.Join(dir, "socket")
	h.httpSocket = filepath.Join(dir, "http.sock")
	bySocket := map[string]workloadtoken.Workload{}
	for _, w := range []workloadtoken.Workload{cart, web} {
		h.podSocket[w.PodUID] = filepath.Join(dir, w.PodName+".sock")
		h.httpPod[w.PodUID] = filepath.Join(dir, w.PodName+"-http.sock")
		bySocket[h.podSocket[w.PodUID]] = w
		bySocket[h.httpPod[w.PodUID]] = w
	}
	// What the app's csiPlugin.peer does: a connection on a pod's own socket is that pod.
	peerOf := func(ctx context.Context) identity.Peer {
		if p, ok := peer.FromContext(ctx); ok && p.LocalAddr != nil {
			if w, ok := bySocket[p.LocalAddr.String()]; ok {
				return identity.Peer{SocketPod: &attestedpod.Ref{Namespace: w.Namespace, Name: w.PodName, UID: w.PodUID}}
			}
		}
		return identity.Peer{}
	}
	h.server = workloadapi.New(workloadapi.Config{
		Auth: &identity.Authenticator{Mode: identity.ModeToken, Verifier: verifier, Pods: h.pods, NodeName: nodeName,
			TrustDomain: trustDomain, Logger: logger},
		Secrets: h.manager, Bundles: h.bundles, Attributes: attrs, TrustDomain: trustDomain, Peer: peerOf, Logger: logger,
		Callers: opt.callers, Observe: opt.observe,
		JWTs: workloadapi.NewJWTSVIDs(workloadapi.JWTSVIDsConfig{Minter: citadel, Clock: clk, Logger: logger}),
	})
	srv := grpc.NewServer()
	h.server.Register(srv)
	var served sync.WaitGroup
	for _, path := range []string{h.shared, h.podSocket[cart.PodUID], h.podSocket[web.PodUID]} {
		lis, err := net.Listen("unix", path)
		if err != nil {
			tb.Fatal(err)
		}
		served.Go(func() { _ = srv.Serve(lis) })
	}
	httpSrv := newHTTPServer(h.server)
	for _, path := range []string{h.httpSocket, h.httpPod[cart.PodUID], h.httpPod[web.PodUID]} {
		lis, err := net.Listen("unix", path)
		if err != nil {
			tb.Fatal(err)
		}
		served.Go(func() { _ = httpSrv.Serve(lis) })
	}
	tb.Cleanup(func() {
		srv.Stop()
		httpSrv.Close()
		served.Wait()
	})
	return h
}

func (h *harness) syncPods(tb testing.TB) {
	tb.Helper()
	var res []*anypb.Any
	for _, w := range []workloadtoken.Workload{cart, web} {
		res = append(res, mustAny(tb, &mcpv1.Pod{Name: w.PodKey(), Namespace: w.Namespace, PodName: w.PodName, Uid: w.PodUID,
			NodeName: nodeName, ServiceAccount: w.ServiceAccount}))
	}
	if err := h.pods.Apply(res); err != nil {
		tb.Fatal(err)
	}
}

// client is go-spiffe's Workload API client on w's own socket.
func (h *harness) client(tb testing.TB, w workloadtoken.Workload) *spiffeapi.Client {
	tb.Helper()
	c, err := spiffeapi.New(testCtx(tb), h.addr(w))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func (h *harness) addr(w workloadtoken.Workload) spiffeapi.ClientOption {
	return spiffeapi.WithAddr("unix://" + h.podSocket[w.PodUID])
}

func (h *harness) token(tb testing.TB, w workloadtoken.Workload) string {
	tb.Helper()
	tok, err := h.issuer.Issue(w, []string{audience}, 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// rawConn is a plain gRPC connection to the shared socket, for what go-spiffe's client never
// sends (a call without the security header).
func (h *harness) rawConn(tb testing.TB) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+h.shared, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, workloadapi.SecurityHeader, "true")
}

func testCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func requireStatus(tb testing.TB, err error, code codes.Code, msg string) {
	tb.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || st.Message() != msg {
		tb.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), code, msg)
	}
}

func mustAny(tb testing.TB, m proto.Message) *anypb.Any {
	tb.Helper()
	a, err := anypb.New(m)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// fakeCitadel is citadel's JWTSVIDService: it authorizes as citadel does (the workload's token,
// or the agent's attested-pod statement for a pod of its view) and mints real ES256 JWT-SVIDs
// with an in-test key; the trust domain's key set can be rotated.
type fakeCitadel struct {
	cav1.UnimplementedJWTSVIDServiceServer
	addr     string
	verifier identity.Verifier
	pods     *mcpclient.Pods

	mu      sync.Mutex
	key     *ecdsa.PrivateKey
	kid     string
	keys    []jose.JSONWebKey
	version uint64
	mints   int
	ttl     time.Duration
}

func newFakeCitadel(tb testing.TB, verifier identity.Verifier, pods *mcpclient.Pods) *fakeCitadel {
	tb.Helper()
	f := &fakeCitadel{verifier: verifier, pods: pods, ttl: jwtTTL}
	f.rotate()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f.addr = lis.Addr().String()
	srv := grpc.NewServer()
	cav1.RegisterJWTSVIDServiceServer(srv, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	tb.Cleanup(func() { srv.Stop(); <-done })
	return f
}

// rotate makes a new signing key and publishes it next to the old ones.
func (f *fakeCitadel) rotate() {
	key := genKeyNoTB()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.key, f.kid = key, fmt.Sprintf("key-%d", f.version+1)
	f.keys = append(f.keys, jose.JSONWebKey{Key: key.Public(), KeyID: f.kid, Algorithm: string(jose.ES256), Use: "jwt-svid"})
	f.version++
}

func (f *fakeCitadel) mintCount() int { f.mu.Lock(); defer f.mu.Unlock(); return f.mints }

func (f *fakeCitadel) MintJWTSVID(ctx context.Context, req *cav1.MintJWTSVIDRequest) (*cav1.MintJWTSVIDResponse, error) {
	var sa, ns string
	if attestedpod.Present(req.GetMetadata()) {
		ref, err := attestedpod.From(req.GetMetadata())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		pod, ok := f.pods.Get(ref.Key())
		if !ok || pod.GetUid() != ref.UID {
			return nil, status.Error(codes.PermissionDenied, "pod not on the calling node")
		}
		ns, sa = pod.GetNamespace(), pod.GetServiceAccount()
	} else {
		w, err := f.verifier.Verify(identity.BearerToken(ctx))
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		ns, sa = w.Namespace, w.ServiceAccount
	}
	if len(req.GetAudiences()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no audience")
	}
	f.mu.Lock()
	f.mints++
	key, kid, ttl := f.key, f.kid, f.ttl
	f.mu.Unlock()
	id := spiffeid.RequireFromSegments(trustDomain, "ns", ns, "sa", sa)
	tok, exp, err := signJWT(key, kid, id.String(), req.GetAudiences(), time.Now(), ttl)
	if err != nil {
		return nil, err
	}
	return &cav1.MintJWTSVIDResponse{SpiffeId: id.String(), Token: tok, ExpiresAt: timestamppb.New(exp)}, nil
}

func (f *fakeCitadel) GetJWTBundle(context.Context, *cav1.GetJWTBundleRequest) (*cav1.GetJWTBundleResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: f.keys})
	if err != nil {
		return nil, err
	}
	return &cav1.GetJWTBundleResponse{TrustDomain: trustDomain.Name(), Jwks: b, Version: f.version}, nil
}

// signJWT makes a JWT-SVID for sub, issued at iat.
func signJWT(key crypto.Signer, kid, sub string, aud []string, iat time.Time, ttl time.Duration) (string, time.Time, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", time.Time{}, err
	}
	exp := iat.Add(ttl).Truncate(time.Second)
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: sub, Audience: aud, IssuedAt: jwt.NewNumericDate(iat),
		Expiry: jwt.NewNumericDate(exp)}).Serialize()
	return tok, exp, err
}

type nopSecretsObserver struct{}

func (nopSecretsObserver) Issued(spiffeid.ID, *x509.Certificate, time.Duration) {}
func (nopSecretsObserver) IssueFailed(spiffeid.ID, error)                       {}
func (nopSecretsObserver) Dropped(spiffeid.ID)                                  {}
func (nopSecretsObserver) BundleChanged([]*x509.Certificate)                    {}

// testCA implements secrets.Signer and secrets.BundleSource in process, as in the sds tests (test
// files cannot be shared across packages): it signs the CSR under an intermediate and returns
// leaf, intermediate, root; its roots can be extended (a root rotation's overlap).
type testCA struct {
	clk clock.PassiveClock

	mu       sync.Mutex
	roots    []*x509.Certificate
	inter    *x509.Certificate
	interKey crypto.Signer
	version  uint64
}

func newTestCA(tb testing.TB, clk clock.PassiveClock) *testCA {
	tb.Helper()
	rootKey := genKeyNoTB()
	root := selfSigned(tb, clk.Now(), rootKey, "test root")
	interKey := genKeyNoTB()
	inter := mustCert(tb, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test intermediate"},
		NotBefore: clk.Now().Add(-time.Hour), NotAfter: clk.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign,
	}, root, interKey.Public(), rootKey)
	return &testCA{clk: clk, roots: []*x509.Certificate{root}, inter: inter, interKey: interKey, version: 1}
}

// addRoot publishes a new root next to the current one and returns the bundle's version.
func (ca *testCA) addRoot(tb testing.TB) uint64 {
	root := selfSigned(tb, ca.clk.Now(), genKeyNoTB(), "next root")
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.roots = append(ca.roots, root)
	ca.version++
	return ca.version
}

func (ca *testCA) Sign(_ context.Context, csrPEM []byte, _ secrets.Credential, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, errors.Join(secrets.ErrRejected, err)
	}
	now := ca.clk.Now()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, URIs: csr.URIs, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ca.inter, csr.PublicKey, ca.interKey)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, ca.inter, ca.roots[0]}, nil
}

func (ca *testCA) TrustBundle(context.Context) ([]*x509.Certificate, uint64, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return append([]*x509.Certificate{}, ca.roots...), ca.version, nil
}

func selfSigned(tb testing.TB, now time.Time, key *ecdsa.PrivateKey, cn string) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	return mustCert(tb, tmpl, tmpl, key.Public(), key)
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

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("not a PEM csr")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	return csr, csr.CheckSignature()
}

// newHTTPServer serves the HTTP API as the app does: peercred.ConnContext puts each connection
// in its requests' contexts (here without a resolver: the harness identifies by socket).
func newHTTPServer(s *workloadapi.Server) *http.Server {
	return &http.Server{Handler: s.HTTPHandler(), ConnContext: peercred.ConnContext(nil), ReadHeaderTimeout: 5 * time.Second}
}

// rawPodConn is a plain gRPC connection to w's own socket.
func (h *harness) rawPodConn(tb testing.TB, w workloadtoken.Workload) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+h.podSocket[w.PodUID], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

func itoa(n int) string { return strconv.Itoa(n) }

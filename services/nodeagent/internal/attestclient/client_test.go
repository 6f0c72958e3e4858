package attestclient_test

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	attestv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/attest/v1"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/attestclient"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// citadel is an attest server on real TLS that signs for whatever node it is told to, after
// refusing the first `refuse` calls.
type citadel struct {
	attestv1.UnimplementedNodeAttestationServiceServer
	ca   *servicetls.BootstrapCA
	addr string

	mu     sync.Mutex
	node   string
	ttl    time.Duration
	refuse int
	calls  int
	tokens []string
}

func (c *citadel) AttestNode(_ context.Context, req *attestv1.AttestNodeRequest) (*attestv1.AttestNodeResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	c.tokens = append(c.tokens, req.GetToken())
	if c.refuse > 0 {
		c.refuse--
		return nil, status.Error(codes.PermissionDenied, "pod agent-x1 runs on node other")
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, _ := servicetls.NodeAgentID(td, c.node)
	leaf, err := c.ca.Sign(id, csr.PublicKey, c.ttl)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &attestv1.AttestNodeResponse{CertChain: [][]byte{leaf.Raw}, SpiffeId: id.String()}, nil
}

// observed counts what the client reports (safe for concurrent use).
type observed struct {
	mu               sync.Mutex
	attested, failed int
	expiry           time.Time
}

func (o *observed) Attested(notAfter time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.attested, o.expiry = o.attested+1, notAfter
}

func (o *observed) AttestFailed() { o.mu.Lock(); defer o.mu.Unlock(); o.failed++ }

type fixture struct {
	obs     observed
	dir     string
	caFile  string
	tokFile string
	citadel *citadel
}

// start serves the attest service with a certificate for serverService.
func start(t *testing.T, serverService string) *fixture {
	t.Helper()
	ca, err := servicetls.NewBootstrapCA(td, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dir: t.TempDir(), citadel: &citadel{ca: ca, node: "node-a", ttl: time.Hour}}
	serverID, _ := servicetls.ServiceID(td, serverService)
	files, err := ca.Issue(f.dir, "server", serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident, err := servicetls.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	f.caFile = files.CAFile
	f.tokFile = filepath.Join(f.dir, "token")
	if err := os.WriteFile(f.tokFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(ident.ServerTLSWithoutClientAuth())))
	attestv1.RegisterNodeAttestationServiceServer(srv, f.citadel)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.citadel.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return f
}

func (f *fixture) client(t *testing.T, clk *clocktesting.FakeClock) *attestclient.Client {
	t.Helper()
	cfg := attestclient.Config{Addr: f.citadel.addr, TokenFile: f.tokFile, CAFile: f.caFile, NodeName: "node-a",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Observe: &f.obs}
	if clk != nil {
		cfg.Clock = clk
	}
	c, err := attestclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAttest(t *testing.T) {
	f := start(t, servicetls.Citadel)
	svid, err := f.client(t, nil).Attest(ctxT(t))
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if got := svid.ID.String(); got != "spiffe://cluster.local/portcullis/nodeagent/node-a" {
		t.Errorf("ID = %s", got)
	}
	if f.citadel.tokens[0] != "token-1" {
		t.Errorf("citadel got token %q, want the file's content without the newline", f.citadel.tokens[0])
	}
}

func TestAttestRefusesAServerThatIsNotCitadel(t *testing.T) {
	f := start(t, servicetls.MCPSync)
	_, err := f.client(t, nil).Attest(ctxT(t))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "want citadel's ID") {
		t.Fatalf("Attest against mcp-sync's certificate: %v, want a handshake failure naming the ID", err)
	}
	if f.citadel.calls != 0 {
		t.Error("the token was sent to a server that is not citadel")
	}
}

func TestAttestRefusesACertificateForAnotherNode(t *testing.T) {
	f := start(t, servicetls.Citadel)
	f.citadel.node = "node-b"
	_, err := f.client(t, nil).Attest(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), `not the node agent of node "node-a"`) {
		t.Fatalf("Attest: %v, want a refusal of node-b's certificate", err)
	}
}

// stepWhenWaiting moves clk forward whenever something waits on it, until ctx ends.
func stepWhenWaiting(ctx context.Context, clk *clocktesting.FakeClock, step time.Duration) {
	for ctx.Err() == nil {
		if clk.HasWaiters() {
			clk.Step(step)
		}
		time.Sleep(time.Millisecond) // polling the fake clock, not asserting
	}
}

func TestFirstRetriesUntilCitadelAgrees(t *testing.T) {
	f := start(t, servicetls.Citadel)
	f.citadel.refuse = 3
	clk := clocktesting.NewFakeClock(time.Now())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); stepWhenWaiting(ctx, clk, time.Minute) }()
	defer wg.Wait()
	defer cancel()

	svid, err := f.client(t, clk).First(ctx)
	if err != nil {
		t.Fatalf("First: %v", err)
	}
	if svid.ID.String() != "spiffe://cluster.local/portcullis/nodeagent/node-a" || f.citadel.calls != 4 {
		t.Fatalf("First = %s after %d calls, want node-a after 4", svid.ID, f.citadel.calls)
	}
	f.obs.mu.Lock()
	defer f.obs.mu.Unlock()
	if f.obs.failed != 3 || f.obs.attested != 1 || !f.obs.expiry.Equal(svid.Certificates[0].NotAfter) {
		t.Errorf("observed %d failures and %d attestations (expiry %v), want 3 and 1 (%v)", f.obs.failed, f.obs.attested, f.obs.expiry, svid.Certificates[0].NotAfter)
	}
}

func TestRunRenewsAtHalfLifeWithTheRefreshedToken(t *testing.T) {
	f := start(t, servicetls.Citadel)
	clk := clocktesting.NewFakeClock(time.Now())
	c := f.client(t, clk)
	first, err := c.Attest(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	rotating, err := servicetls.NewRotating(first, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	// The kubelet refreshes the projected token; the renewal must present the new one.
	if err := os.WriteFile(f.tokFile, []byte("token-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, rotating) }()
	defer func() { cancel(); <-done }()

	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond) // until Run waits for the half-life
	}
	clk.Step(29 * time.Minute) // not yet the half-life of the 1h certificate
	clk.Step(2 * time.Minute)
	deadline := time.Now().Add(10 * time.Second)
	for rotating.Current().Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("certificate not renewed after its half-life")
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.citadel.mu.Lock()
	defer f.citadel.mu.Unlock()
	if got := f.citadel.tokens[len(f.citadel.tokens)-1]; got != "token-2" {
		t.Errorf("renewal presented %q, want the refreshed token", got)
	}
	if rotating.Current().PrivateKey == first.PrivateKey {
		t.Error("renewal reused the key")
	}
}

func TestRunRetriesAFailedRenewalSoon(t *testing.T) {
	f := start(t, servicetls.Citadel)
	clk := clocktesting.NewFakeClock(time.Now())
	c := f.client(t, clk)
	first, err := c.Attest(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	rotating, err := servicetls.NewRotating(first, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	f.citadel.mu.Lock()
	f.citadel.refuse, f.citadel.calls = 1, 0
	f.citadel.mu.Unlock()
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, rotating) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	calls := func() int { f.citadel.mu.Lock(); defer f.citadel.mu.Unlock(); return f.citadel.calls }
	waitFor("Run to wait for the half-life", clk.HasWaiters)
	clk.Step(31 * time.Minute)
	waitFor("the refused renewal", func() bool { return calls() == 1 && clk.HasWaiters() })
	if rotating.Current() != first {
		t.Fatal("a refused renewal replaced the certificate")
	}
	clk.Step(2 * time.Second) // the first backoff (1s ±20%), not another half-life
	waitFor("the retried renewal", func() bool { return rotating.Current() != first })
}

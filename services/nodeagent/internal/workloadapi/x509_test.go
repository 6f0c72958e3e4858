package workloadapi_test

import (
	"context"
	"crypto/x509"
	"io"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
)

// x509Watcher collects what a go-spiffe watch sees.
type x509Watcher struct{ updates chan *spiffeapi.X509Context }

func (w x509Watcher) OnX509ContextUpdate(c *spiffeapi.X509Context) { w.updates <- c }
func (w x509Watcher) OnX509ContextWatchError(error)                {}

func (w x509Watcher) next(tb testing.TB) *spiffeapi.X509Context {
	tb.Helper()
	select {
	case c := <-w.updates:
		return c
	case <-time.After(10 * time.Second):
		tb.Fatal("no update on the open watch")
		return nil
	}
}

// watch opens a go-spiffe X.509 watch for w's socket, ended at cleanup.
func (h *harness) watch(tb testing.TB, c *spiffeapi.Client) x509Watcher {
	tb.Helper()
	w := x509Watcher{updates: make(chan *spiffeapi.X509Context, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.WatchX509Context(ctx, w) }()
	tb.Cleanup(func() { cancel(); <-done })
	return w
}

func TestFetchX509SVIDWithGoSPIFFE(t *testing.T) {
	h := newHarness(t, options{})
	svid, err := spiffeapi.FetchX509SVID(testCtx(t), h.addr(cart))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != cartID {
		t.Fatalf("svid for %s, want %s", svid.ID, cartID)
	}
	if len(svid.Certificates) != 2 {
		t.Fatalf("chain of %d certificates, want leaf and intermediate (no root)", len(svid.Certificates))
	}
	bundles, err := spiffeapi.FetchX509Bundles(testCtx(t), h.addr(web))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range b.X509Authorities() {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	inter.AddCert(svid.Certificates[1])
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the svid does not verify to the bundle web fetched: %v", err)
	}
}

func TestRenewalAndBundleChangeArriveOnOpenWatch(t *testing.T) {
	h := newHarness(t, options{})
	w := h.watch(t, h.client(t, cart))
	first := w.next(t)
	leaf := first.DefaultSVID().Certificates[0]

	// Renewal: past the renewal point the manager re-issues, and the watch hears of it.
	h.clk.SetTime(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 56 / 100))
	renewed := w.next(t).DefaultSVID().Certificates[0]
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("the push after the renewal point carries the same certificate")
	}

	// Root rotation's overlap: the new root reaches the open watch.
	want := h.ca.addRoot(t)
	if err := h.manager.RefreshBundle(testCtx(t), "test", want, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	b, err := w.next(t).Bundles.GetX509BundleForTrustDomain(trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(b.X509Authorities()); n != 2 {
		t.Fatalf("bundle after the change has %d roots, want 2", n)
	}
}

func TestNoIdentityIsPermissionDenied(t *testing.T) {
	h := newHarness(t, options{})
	// The shared socket identifies by token only, and go-spiffe sends none.
	_, err := spiffeapi.FetchX509SVID(testCtx(t), spiffeapi.WithAddr("unix://"+h.shared))
	requireStatus(t, err, codes.PermissionDenied, "no identity issued")
}

// Two apps, two identities, one mTLS connection: each gets its SVID and bundle from its own
// Workload API socket through go-spiffe's X509Source and authorizes the other's SPIFFE ID.
func TestSPIFFETLSBetweenTwoApps(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	cartSrc, err := spiffeapi.NewX509Source(ctx, spiffeapi.WithClientOptions(h.addr(cart)))
	if err != nil {
		t.Fatal(err)
	}
	defer cartSrc.Close()
	webSrc, err := spiffeapi.NewX509Source(ctx, spiffeapi.WithClientOptions(h.addr(web)))
	if err != nil {
		t.Fatal(err)
	}
	defer webSrc.Close()

	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(cartID), webSrc))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type accepted struct {
		peer spiffeid.ID
		msg  string
		err  error
	}
	got := make(chan accepted, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			got <- accepted{err: err}
			return
		}
		defer conn.Close()
		msg, err := io.ReadAll(conn)
		id, _ := spiffetls.PeerIDFromConn(conn)
		got <- accepted{peer: id, msg: string(msg), err: err}
	}()

	conn, err := spiffetls.DialWithMode(ctx, "tcp", lis.Addr().String(), spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(webID), cartSrc))
	if err != nil {
		t.Fatal(err)
	}
	serverID, err := spiffetls.PeerIDFromConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, "hello from cart"); err != nil {
		t.Fatal(err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	a := <-got
	conn.Close()
	if a.err != nil || a.peer != cartID || a.msg != "hello from cart" || serverID != webID {
		t.Fatalf("server saw %s %q (%v), client saw %s; want %s and %s", a.peer, a.msg, a.err, serverID, cartID, webID)
	}

}

package e2e

import (
	"context"
	"crypto/x509"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// app is a workload of examples/cluster talking to node-a's agent with go-spiffe's own client.
func app(t *testing.T, s *stack.Stack, podKey string) (*workloadapi.Client, []workloadapi.ClientOption) {
	t.Helper()
	tok, err := s.Token(pod(t, podKey), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opts := []workloadapi.ClientOption{workloadapi.WithAddr("unix://" + s.Socket("node-a")),
		workloadapi.WithDialOptions(grpc.WithPerRPCCredentials(bearer(tok)))}
	c, err := workloadapi.New(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, opts
}

// An app in the dev stack, with go-spiffe's own Workload API client: its X.509 SVID and bundle,
// a root rotation and a forced rotation arriving on its open watch, mTLS with another app through
// spiffetls, and a JWT-SVID validated by the peer through the API and offline. The JWT key
// rotation is TestJWTSVIDKeyRotationThroughTheStack.
func TestWorkloadAPIWithGoSpiffe(t *testing.T) {
	s, _ := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	frontendID := spiffeid.RequireFromSegments(td, "ns", "shop", "sa", "frontend")
	cartID := spiffeid.RequireFromSegments(td, "ns", "shop", "sa", "cart")
	frontend, frontendOpts := app(t, s, "shop/frontend-0")
	cart, cartOpts := app(t, s, "shop/cart-0")

	svid, err := frontend.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != frontendID {
		t.Fatalf("FetchX509SVID gave %s, want %s", svid.ID, frontendID)
	}
	bundles, err := frontend.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(td)
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("FetchX509Bundles: %v, %v; want one root for %s", b, err, td)
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool(b.X509Authorities()),
		Intermediates: pool(svid.Certificates[1:]), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the SVID does not chain to the bundle: %v", err)
	}

	frontendSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(frontendOpts...))
	if err != nil {
		t.Fatal(err)
	}
	defer frontendSrc.Close()
	cartSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(cartOpts...))
	if err != nil {
		t.Fatal(err)
	}
	defer cartSrc.Close()

	t.Run("mTLS between two apps with spiffetls", func(t *testing.T) {
		spiffetlsRoundTrip(t, ctx, cartSrc, cartID, frontendSrc, frontendID)
	})

	t.Run("a root rotation and a forced rotation arrive on the open watch", func(t *testing.T) {
		w := watch(t, frontend)
		ctl := admin(t, s)
		before := w.svid(t)
		rotate(t, ctl, kmsv1.RotationStep_ROTATION_STEP_PREPARE, false)
		eventually(t, "the new root on the open watch", func() bool { return w.roots(td) == 2 })
		rotate(t, ctl, kmsv1.RotationStep_ROTATION_STEP_ACTIVATE, false)
		eventually(t, "a certificate under the new root on the open watch", func() bool {
			return w.svid(t).SerialNumber.Cmp(before.SerialNumber) != 0
		})
		rotated := w.svid(t)
		if _, err := ctl.ForceRotateIdentity(ctx, &kmsv1.ForceRotateIdentityRequest{SpiffeId: frontendID.String(), Reason: "e2e"}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "a new certificate after the forced rotation on the open watch", func() bool {
			return w.svid(t).SerialNumber.Cmp(rotated.SerialNumber) != 0
		})
		// The sources followed too (go-spiffe's X509Source reads its bundles without its lock, so
		// they are only used once no update is in flight).
		eventually(t, "the X509Source on the forced rotation's certificate", func() bool {
			return current(t, frontendSrc).SerialNumber.Cmp(w.svid(t).SerialNumber) == 0
		})
		spiffetlsRoundTrip(t, ctx, cartSrc, cartID, frontendSrc, frontendID)
	})

	t.Run("JWT-SVIDs: fetch, validate through the API and offline", func(t *testing.T) {
		jwt, err := frontend.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "cart"})
		if err != nil {
			t.Fatal(err)
		}
		if jwt.ID != frontendID || len(jwt.Audience) != 1 || jwt.Audience[0] != "cart" {
			t.Fatalf("JWT-SVID for %s %v, want %s for [cart]", jwt.ID, jwt.Audience, frontendID)
		}
		if ttl := time.Until(jwt.Expiry); ttl <= 0 || ttl > 5*time.Minute {
			t.Fatalf("JWT-SVID lives %s, want at most the default 5m", ttl)
		}
		got, err := cart.ValidateJWTSVID(ctx, jwt.Marshal(), "cart")
		if err != nil || got.ID != frontendID {
			t.Fatalf("ValidateJWTSVID by the peer = %v, %v; want %s", got, err, frontendID)
		}
		if _, err := cart.ValidateJWTSVID(ctx, jwt.Marshal(), "ledger"); err == nil {
			t.Fatal("a token for another audience was accepted")
		}
		jwtBundles, err := cart.FetchJWTBundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		offline, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jwtBundles, []string{"cart"})
		if err != nil || offline.ID != frontendID {
			t.Fatalf("offline validation with the JWT bundle: %v, %v", offline, err)
		}
	})
}

// spiffetlsRoundTrip has the server app accept one connection from the client app over mTLS,
// each authorizing the other's ID, and echo one line.
func spiffetlsRoundTrip(t *testing.T, ctx context.Context, serverSrc *workloadapi.X509Source, serverID spiffeid.ID,
	clientSrc *workloadapi.X509Source, clientID spiffeid.ID) {
	t.Helper()
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(clientID), serverSrc))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		_, err = io.Copy(conn, io.LimitReader(conn, 5))
		served <- err
	}()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", lis.Addr().String(), spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(serverID), clientSrc))
	if err != nil {
		t.Fatalf("spiffetls dial: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo over spiffetls: %q, %v", buf, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server side: %v", err)
	}
}

// x509Watch is an open WatchX509Context watch and what it last delivered.
type x509Watch struct {
	mu   sync.Mutex
	last *workloadapi.X509Context
}

func watch(t *testing.T, c *workloadapi.Client) *x509Watch {
	t.Helper()
	w := &x509Watch{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.WatchX509Context(ctx, w) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the watch's first update", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.last != nil })
	return w
}

func (w *x509Watch) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = c
}

func (w *x509Watch) OnX509ContextWatchError(error) {}

func (w *x509Watch) svid(t *testing.T) *x509.Certificate {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last.DefaultSVID().Certificates[0]
}

func (w *x509Watch) roots(td spiffeid.TrustDomain) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, err := w.last.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		return 0
	}
	return len(b.X509Authorities())
}

func current(t *testing.T, src *workloadapi.X509Source) *x509.Certificate {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid.Certificates[0]
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

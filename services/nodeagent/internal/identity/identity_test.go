package identity_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

const (
	node     = "node-a"
	issuerID = "https://tokens.test"
	audience = "portcullis"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// cart is the pod the tokens below are for; it runs on this node.
var cart = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-1", PodUID: "uid-cart-1"}

type fixture struct {
	clk    *testingclock.FakeClock
	issuer *workloadtoken.Issuer
	pods   *spyPods
	auth   *identity.Authenticator
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	clk := testingclock.NewFakeClock(time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC))
	issuer, err := workloadtoken.NewIssuer(issuerID, clk)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{
		Issuer: issuerID, Audiences: []string{audience}, Keys: issuer.KeySet(), Clock: clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	pods := &spyPods{Pods: mcpclient.NewPods(), syncedAsked: make(chan struct{}, 1)}
	return &fixture{clk: clk, issuer: issuer, pods: pods, auth: &identity.Authenticator{
		Mode: identity.ModeToken, Verifier: verifier, Pods: pods, NodeName: node, TrustDomain: td, Logger: slog.New(slog.DiscardHandler),
	}}
}

// apply feeds pods to the real mcpclient view the way the MCP watch does.
func (f *fixture) apply(t testing.TB, pods ...*mcpv1.Pod) {
	t.Helper()
	var res []*anypb.Any
	for _, p := range pods {
		a, err := anypb.New(p)
		if err != nil {
			t.Fatal(err)
		}
		res = append(res, a)
	}
	if err := f.pods.Apply(res); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) token(t *testing.T, w workloadtoken.Workload, aud string, ttl time.Duration) string {
	t.Helper()
	tok, err := f.issuer.Issue(w, []string{aud}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func pod(w workloadtoken.Workload, nodeName string) *mcpv1.Pod {
	return &mcpv1.Pod{
		Name: w.PodKey(), Namespace: w.Namespace, PodName: w.PodName, Uid: w.PodUID,
		NodeName: nodeName, ServiceAccount: w.ServiceAccount,
	}
}

// spyPods is the real pod view, telling the test when Authenticate starts waiting for it.
type spyPods struct {
	*mcpclient.Pods
	syncedAsked chan struct{}
}

func (p *spyPods) Synced() <-chan struct{} {
	select {
	case p.syncedAsked <- struct{}{}:
	default:
	}
	return p.Pods.Synced()
}

func TestGoodTokenYieldsSpiffeID(t *testing.T) {
	f := newFixture(t)
	f.apply(t, pod(cart, node))
	tok := f.token(t, cart, audience, time.Hour)
	c, err := f.auth.Authenticate(context.Background(), identity.Evidence{Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://cluster.local/ns/shop/sa/cart"; c.ID.String() != want {
		t.Fatalf("ID = %s, want %s", c.ID, want)
	}
	if c.Token != tok || c.Workload.PodUID != cart.PodUID || c.Workload.PodKey() != cart.PodKey() {
		t.Fatalf("caller %+v does not carry the token and its workload", c)
	}
}

func TestRefusals(t *testing.T) {
	other := func(mod func(*workloadtoken.Workload)) workloadtoken.Workload { w := cart; mod(&w); return w }
	for _, tc := range []struct {
		name  string
		pods  []*mcpv1.Pod
		token func(t *testing.T, f *fixture) string
		want  error
		cause error
	}{{
		name: "missing token", pods: []*mcpv1.Pod{pod(cart, node)},
		token: func(*testing.T, *fixture) string { return "" },
		want:  identity.ErrUnauthenticated,
	}, {
		name: "expired token", pods: []*mcpv1.Pod{pod(cart, node)},
		token: func(t *testing.T, f *fixture) string {
			tok := f.token(t, cart, audience, 10*time.Minute)
			f.clk.Step(10*time.Minute + workloadtoken.DefaultLeeway + time.Second)
			return tok
		},
		want: identity.ErrUnauthenticated, cause: workloadtoken.ErrExpired,
	}, {
		name: "forged token", pods: []*mcpv1.Pod{pod(cart, node)},
		token: func(t *testing.T, f *fixture) string {
			forger, err := workloadtoken.NewIssuer(issuerID, f.clk) // same name, another key
			if err != nil {
				t.Fatal(err)
			}
			tok, err := forger.Issue(cart, []string{audience}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		},
		want: identity.ErrUnauthenticated, cause: workloadtoken.ErrSignature,
	}, {
		name: "wrong audience", pods: []*mcpv1.Pod{pod(cart, node)},
		token: func(t *testing.T, f *fixture) string { return f.token(t, cart, "kubernetes", time.Hour) },
		want:  identity.ErrUnauthenticated, cause: workloadtoken.ErrAudience,
	}, {
		name: "garbage token", pods: []*mcpv1.Pod{pod(cart, node)},
		token: func(*testing.T, *fixture) string { return "not.a.jwt" },
		want:  identity.ErrUnauthenticated,
	}, {
		name: "pod not in this node's view", pods: []*mcpv1.Pod{pod(other(func(w *workloadtoken.Workload) { w.PodName = "web-1"; w.PodUID = "uid-web-1" }), node)},
		token: func(t *testing.T, f *fixture) string { return f.token(t, cart, audience, time.Hour) },
		want:  identity.ErrNotOnNode,
	}, {
		// mcp-sync sends a node only its own pods; if another node's pod ever reaches the view,
		// it must still not authenticate here.
		name: "pod on another node", pods: []*mcpv1.Pod{pod(cart, "node-b")},
		token: func(t *testing.T, f *fixture) string { return f.token(t, cart, audience, time.Hour) },
		want:  identity.ErrNotOnNode,
	}, {
		name: "pod uid mismatch (pod recreated under the same name)", pods: []*mcpv1.Pod{pod(other(func(w *workloadtoken.Workload) { w.PodUID = "uid-cart-2" }), node)},
		token: func(t *testing.T, f *fixture) string { return f.token(t, cart, audience, time.Hour) },
		want:  identity.ErrNotOnNode,
	}, {
		name: "service account mismatch", pods: []*mcpv1.Pod{pod(other(func(w *workloadtoken.Workload) { w.ServiceAccount = "admin" }), node)},
		token: func(t *testing.T, f *fixture) string { return f.token(t, cart, audience, time.Hour) },
		want:  identity.ErrNotOnNode,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.apply(t, tc.pods...)
			c, err := f.auth.Authenticate(context.Background(), identity.Evidence{Token: tc.token(t, f)})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Authenticate = %+v, %v; want %v", c, err, tc.want)
			}
			if tc.cause != nil && !errors.Is(err, tc.cause) {
				t.Fatalf("error %v does not wrap the cause %v", err, tc.cause)
			}
			if !c.ID.IsZero() {
				t.Fatalf("refused caller still got identity %s", c.ID)
			}
		})
	}
}

func TestWaitsForThePodViewThenSucceeds(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, cart, audience, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		c   identity.Caller
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := f.auth.Authenticate(ctx, identity.Evidence{Token: tok})
		done <- result{c, err}
	}()
	select {
	case <-f.pods.syncedAsked: // the request is waiting for the first pod list from mcp-sync
	case <-ctx.Done():
		t.Fatal("Authenticate never looked at the pod view")
	}
	select {
	case r := <-done:
		t.Fatalf("Authenticate returned %v, %v before the pod view was synced", r.c, r.err)
	default:
	}
	f.apply(t, pod(cart, node))
	select {
	case r := <-done:
		if r.err != nil || r.c.ID.String() != "spiffe://cluster.local/ns/shop/sa/cart" {
			t.Fatalf("after sync: %+v, %v", r.c, r.err)
		}
	case <-ctx.Done():
		t.Fatal("Authenticate did not return after the pod view synced")
	}
}

func TestWaitForThePodViewEndsWithTheCaller(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, cart, audience, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.auth.Authenticate(ctx, identity.Evidence{Token: tok})
	if !errors.Is(err, context.Canceled) || errors.Is(err, identity.ErrUnauthenticated) || errors.Is(err, identity.ErrNotOnNode) {
		t.Fatalf("canceled before sync: %v; want context.Canceled and no verdict on the caller", err)
	}
}

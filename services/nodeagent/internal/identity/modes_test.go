package identity_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// web is a second pod on this node, under another service account.
var web = workloadtoken.Workload{Namespace: "shop", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-web-1"}

func TestPeerCredentialsNameThePod(t *testing.T) {
	for _, mode := range []identity.Mode{identity.ModePeer, identity.ModeTokenPeer} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t)
			f.auth.Mode = mode
			f.apply(t, pod(cart, node), pod(web, node))
			c, err := f.auth.Authenticate(context.Background(), identity.Evidence{Peer: identity.Peer{PID: 42, PodUID: web.PodUID}})
			if err != nil {
				t.Fatal(err)
			}
			if c.ID.String() != "spiffe://cluster.local/ns/shop/sa/web" || c.Via != "peer" || c.Token != "" {
				t.Fatalf("caller = %+v, want web's identity by peer credentials and no token", c)
			}
			if want := (attestedpod.Ref{Namespace: "shop", Name: "web-1", UID: web.PodUID}); c.Pod == nil || *c.Pod != want {
				t.Fatalf("caller pod = %v, want %v (citadel is asked on the agent's word for it)", c.Pod, want)
			}
		})
	}
}

func TestTokenPeerCrossChecksTheToken(t *testing.T) {
	f := newFixture(t)
	f.auth.Mode = identity.ModeTokenPeer
	f.apply(t, pod(cart, node), pod(web, node))
	webTok, cartTok := f.token(t, web, audience, time.Hour), f.token(t, cart, audience, time.Hour)

	c, err := f.auth.Authenticate(context.Background(), identity.Evidence{Token: webTok, Peer: identity.Peer{PodUID: web.PodUID}})
	if err != nil || c.Token != webTok {
		t.Fatalf("agreeing token and peer: %+v, %v", c, err)
	}
	// A process of web that has got hold of cart's token.
	_, err = f.auth.Authenticate(context.Background(), identity.Evidence{Token: cartTok, Peer: identity.Peer{PID: 7, PodUID: web.PodUID}})
	if !errors.Is(err, identity.ErrMismatch) || !strings.Contains(err.Error(), "cart-1") {
		t.Fatalf("stolen token: %v; want ErrMismatch naming the token's pod", err)
	}
	_, err = f.auth.Authenticate(context.Background(), identity.Evidence{Token: "garbage", Peer: identity.Peer{PodUID: web.PodUID}})
	if !errors.Is(err, identity.ErrUnauthenticated) {
		t.Fatalf("bad token beside good peer credentials: %v; want ErrUnauthenticated", err)
	}
	// Peer mode does not look at the token at all.
	f.auth.Mode = identity.ModePeer
	if c, err := f.auth.Authenticate(context.Background(), identity.Evidence{Token: cartTok, Peer: identity.Peer{PodUID: web.PodUID}}); err != nil || c.Workload.PodUID != web.PodUID {
		t.Fatalf("peer mode: %+v, %v; want web, the token ignored", c, err)
	}
}

func TestPeerRefusals(t *testing.T) {
	gone := errors.New("process 42 exited or its pid was reused before it was resolved")
	for name, tc := range map[string]struct {
		mode identity.Mode
		ev   identity.Evidence
		want error
		msg  string
	}{
		"token mode ignores peer credentials": {identity.ModeToken, identity.Evidence{Peer: identity.Peer{PodUID: web.PodUID}}, identity.ErrUnauthenticated, "no workload token"},
		"unresolved process":                  {identity.ModeTokenPeer, identity.Evidence{Peer: identity.Peer{Err: gone}}, identity.ErrUnauthenticated, "pid was reused"},
		"no peer credentials":                 {identity.ModePeer, identity.Evidence{}, identity.ErrUnauthenticated, "no peer credentials"},
		"token without peer credentials":      {identity.ModeTokenPeer, identity.Evidence{Token: "x"}, identity.ErrUnauthenticated, "no peer credentials"},
		"pod not on this node":                {identity.ModePeer, identity.Evidence{Peer: identity.Peer{PodUID: "uid-elsewhere"}}, identity.ErrNotOnNode, `runs on node "node-b"`},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			f.auth.Mode = tc.mode
			f.apply(t, pod(cart, node), pod(web, node), pod(workloadtoken.Workload{Namespace: "shop", ServiceAccount: "db",
				PodName: "db-1", PodUID: "uid-elsewhere"}, "node-b"))
			_, err := f.auth.Authenticate(context.Background(), tc.ev)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Authenticate = %v; want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestPerPodSocketIsItsPodInEveryMode(t *testing.T) {
	for _, mode := range []identity.Mode{identity.ModeToken, identity.ModePeer, identity.ModeTokenPeer} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t)
			f.auth.Mode = mode
			f.apply(t, pod(cart, node), pod(web, node))
			ref := &attestedpod.Ref{Namespace: "shop", Name: "web-1", UID: web.PodUID}
			c, err := f.auth.Authenticate(context.Background(), identity.Evidence{Peer: identity.Peer{SocketPod: ref}})
			if err != nil || c.Workload.PodUID != web.PodUID || c.Via != "socket" {
				t.Fatalf("per-pod socket: %+v, %v", c, err)
			}
			_, err = f.auth.Authenticate(context.Background(), identity.Evidence{Token: f.token(t, cart, audience, time.Hour),
				Peer: identity.Peer{SocketPod: ref}})
			if !errors.Is(err, identity.ErrMismatch) {
				t.Fatalf("cart's token on web's socket: %v; want ErrMismatch", err)
			}
			stale := &attestedpod.Ref{Namespace: "shop", Name: "web-1", UID: "uid-web-0"}
			if _, err := f.auth.Authenticate(context.Background(), identity.Evidence{Peer: identity.Peer{SocketPod: stale}}); !errors.Is(err, identity.ErrNotOnNode) {
				t.Fatalf("socket of a former pod of that name: %v; want ErrNotOnNode", err)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"token", "peer", "token+peer"} {
		if m, err := identity.ParseMode(s); err != nil || string(m) != s {
			t.Errorf("ParseMode(%q) = %q, %v", s, m, err)
		}
	}
	if _, err := identity.ParseMode("peer+token"); err == nil || !strings.Contains(err.Error(), "token+peer") {
		t.Errorf("ParseMode(peer+token) = %v; want an error listing the modes", err)
	}
}

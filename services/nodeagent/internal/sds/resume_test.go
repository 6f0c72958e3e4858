package sds_test

import (
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
)

// resumeAfter is short: the test waits for it to pass.
const resumeAfter = 50 * time.Millisecond

func cartSocket() *identity.Peer {
	return &identity.Peer{SocketPod: &attestedpod.Ref{Namespace: cart.Namespace, Name: cart.PodName, UID: cart.PodUID}}
}

// MOSN reopens its stream after the agent restarts and never asks again. A stream whose
// connection identifies the caller is answered with what that identity asked for before, and
// keeps receiving updates, although it never sends a request.
func TestSilentStreamOfAnIdentifiedCallerIsResumed(t *testing.T) {
	opt := limited(nil)
	opt.peer, opt.resumeAfter = cartSocket(), resumeAfter
	h := newHarness(t, opt)

	asking, err := h.client.Open(testCtx(t), "mosn", sdsclient.Credential{}) // no token: the socket says who
	if err != nil {
		t.Fatal(err)
	}
	if err := asking.Request(true, cartID.String(), sds.RootCAName); err != nil {
		t.Fatal(err)
	}
	first, err := asking.Recv()
	if err != nil {
		t.Fatal(err)
	}
	h.verified(t, first, cartID.String(), cartID)

	silent, err := dialAgent(t, h).Open(testCtx(t), "mosn", sdsclient.Credential{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := silent.Recv() // nothing sent
	if err != nil {
		t.Fatalf("silent stream: %v", err)
	}
	if len(got) != 2 || got[sds.RootCAName] == nil {
		t.Fatalf("resumed with %v, want the names this identity asked for: %s and %s", keys(got), cartID, sds.RootCAName)
	}
	leaf := h.verified(t, got, cartID.String(), cartID)
	if n := h.obs.resumedStreams(); n != 1 {
		t.Errorf("%d streams counted as resumed, want 1", n)
	}
	eventually(t, "the resumed stream to leave the unauthenticated count", func() bool { return h.obs.unauthenticated() == 0 })

	// The deadline for a first request does not end a resumed stream, and a renewal reaches it.
	h.clk.Step(firstRequestTimeout)
	h.renewalPoint(leaf)
	renewed, err := silent.Recv()
	if err != nil {
		t.Fatalf("resumed stream after the first-request deadline: %v", err)
	}
	if next := h.verified(t, renewed, cartID.String(), cartID); next.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("the renewal pushed the same certificate")
	}
}

// With nothing remembered (an agent restarted without state), Istio's names are answered.
func TestResumedStreamWithoutHistoryGetsIstiosNames(t *testing.T) {
	opt := limited(nil)
	opt.peer, opt.resumeAfter = cartSocket(), resumeAfter
	h := newHarness(t, opt)
	silent, err := h.client.Open(testCtx(t), "mosn", sdsclient.Credential{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := silent.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got[sds.RootCAName].GetType().(*tlsv3.Secret_ValidationContext); !ok || got[sds.DefaultName] == nil {
		t.Fatalf("resumed with %v, want %s and %s", keys(got), sds.DefaultName, sds.RootCAName)
	}
	h.verified(t, got, sds.DefaultName, cartID)

	// A resumed stream that asks after all gets what it asks for, and only that.
	if err := silent.Request(true, cartID.String()); err != nil {
		t.Fatal(err)
	}
	if got, err = silent.Recv(); err != nil || len(got) != 1 || got[cartID.String()] == nil {
		t.Fatalf("after asking for %s: %v, %v", cartID, keys(got), err)
	}
}

// A caller known only by a token (it sends it in its first request) cannot be resumed: its
// silent stream ends at the first-request deadline as before.
func TestSilentStreamWithoutConnectionIdentityIsNotResumed(t *testing.T) {
	opt := limited(nil)
	opt.peer, opt.resumeAfter = &identity.Peer{}, resumeAfter
	h := newHarness(t, opt)
	recv := idleStream(t, h)
	eventually(t, "the idle stream to count as unauthenticated", func() bool { return h.obs.unauthenticated() == 1 })
	h.clk.Step(firstRequestTimeout)
	requireCode(t, recv(), codes.DeadlineExceeded)
	if n := h.obs.resumedStreams(); n != 0 {
		t.Errorf("%d streams resumed, want 0", n)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

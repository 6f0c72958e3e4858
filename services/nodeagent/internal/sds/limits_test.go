package sds_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sdslimits"
)

const firstRequestTimeout = 10 * time.Second

func limited(mod func(*sdslimits.Config)) options {
	c := sdslimits.Config{FirstRequestTimeout: firstRequestTimeout, MaxUnauthenticated: 100, MaxStreamsPerConn: 100, MaxStreamsPerCaller: 100}
	if mod != nil {
		mod(&c)
	}
	return options{limits: &c}
}

// idleStream opens a StreamSecrets stream on its own connection and sends nothing on it.
func idleStream(t *testing.T, h *harness) func() error {
	t.Helper()
	st, err := rawClient(t, h).StreamSecrets(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return func() error { _, err := st.Recv(); return err }
}

// served opens a stream on c for w, asks for default and ROOTCA and returns the first response's
// error.
func served(t *testing.T, h *harness, c *sdsclient.Client, w workloadtoken.Workload) (*sdsclient.Stream, error) {
	t.Helper()
	st, err := c.Open(testCtx(t), "sidecar~"+w.PodName, h.cred(t, w))
	if err != nil {
		t.Fatal(err)
	}
	// A stream the agent refuses at once may be gone before the request is sent (io.EOF);
	// Recv then returns the status it ended with.
	_ = st.Request(true, sds.DefaultName, sds.RootCAName)
	_, err = st.Recv()
	return st, err
}

func dialAgent(t *testing.T, h *harness) *sdsclient.Client {
	t.Helper()
	c, err := sdsclient.Dial(h.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func requireRefusal(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	requireCode(t, err, code)
	if got := status.Convert(err).Message(); !strings.Contains(got, msg) {
		t.Fatalf("message %q does not contain %q", got, msg)
	}
}

// A stream that never sends a request used to be held forever; now it ends at the deadline.
func TestStreamWithoutFirstRequestEndsAtTheDeadline(t *testing.T) {
	h := newHarness(t, limited(nil))
	recv := idleStream(t, h)
	eventually(t, "the idle stream to count as unauthenticated", func() bool { return h.obs.unauthenticated() == 1 })
	// A stream that asks at once is served and is not subject to the deadline.
	good, err := served(t, h, h.client, cart)
	if err != nil {
		t.Fatal(err)
	}
	h.clk.Step(firstRequestTimeout)
	requireCode(t, recv(), codes.DeadlineExceeded)
	if n := h.obs.limitRefusals(sdslimits.ReasonFirstRequestTimeout); n != 1 {
		t.Errorf("%d first-request timeouts counted, want 1", n)
	}
	if n := h.obs.unauthenticated(); n != 0 {
		t.Errorf("%d streams still count as unauthenticated", n)
	}
	// The served stream is still open: a new name on it is answered.
	if err := good.Request(false, cartID.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := good.Recv(); err != nil {
		t.Fatalf("served stream after the deadline: %v", err)
	}
}

func TestUnauthenticatedStreamsAreCapped(t *testing.T) {
	h := newHarness(t, limited(func(c *sdslimits.Config) { c.MaxUnauthenticated = 2 }))
	idle := []func() error{idleStream(t, h), idleStream(t, h)}
	eventually(t, "two idle streams", func() bool { return h.obs.unauthenticated() == 2 })
	_, err := served(t, h, h.client, cart)
	requireRefusal(t, err, codes.ResourceExhausted, "2 streams on this agent have not sent their first request yet, at most 2 are allowed")
	if n := h.obs.limitRefusals(sdslimits.ReasonUnauthenticated); n != 1 {
		t.Errorf("%d refusals counted, want 1", n)
	}
	h.clk.Step(firstRequestTimeout)
	for _, recv := range idle {
		requireCode(t, recv(), codes.DeadlineExceeded)
	}
	if _, err := served(t, h, h.client, cart); err != nil {
		t.Fatalf("once the idle streams timed out: %v", err)
	}
}

func TestStreamsPerConnectionAreCapped(t *testing.T) {
	h := newHarness(t, limited(func(c *sdslimits.Config) { c.MaxStreamsPerConn = 2 }))
	for range 2 {
		if _, err := served(t, h, h.client, cart); err != nil {
			t.Fatal(err)
		}
	}
	_, err := served(t, h, h.client, web)
	requireRefusal(t, err, codes.ResourceExhausted, "this connection already holds 2 streams, at most 2 are allowed per connection")
	if n := h.obs.limitRefusals(sdslimits.ReasonPerConnection); n != 1 {
		t.Errorf("%d refusals counted, want 1", n)
	}
	if _, err := served(t, h, dialAgent(t, h), web); err != nil {
		t.Fatalf("on another connection: %v", err)
	}
}

func TestStreamsPerPodAreCapped(t *testing.T) {
	h := newHarness(t, limited(func(c *sdslimits.Config) { c.MaxStreamsPerCaller = 2 }))
	ctx, closeFirst := context.WithCancel(testCtx(t))
	first, err := h.client.Open(ctx, "sidecar~cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Request(true, sds.DefaultName); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := served(t, h, dialAgent(t, h), cart); err != nil {
		t.Fatal(err)
	}
	_, err = served(t, h, dialAgent(t, h), cart)
	requireRefusal(t, err, codes.ResourceExhausted, "shop/cart-1/uid-cart-1 already holds 2 streams (SDS and Workload API) on this agent, at most 2 are allowed per pod")
	if n := h.obs.limitRefusals(sdslimits.ReasonPerCaller); n != 1 {
		t.Errorf("%d refusals counted, want 1", n)
	}
	if _, err := served(t, h, dialAgent(t, h), web); err != nil {
		t.Fatalf("another pod: %v", err)
	}
	// A closed stream frees its slot.
	closeFirst()
	c := dialAgent(t, h)
	eventually(t, "cart's third stream once its first closed", func() bool {
		_, err := served(t, h, c, cart)
		return err == nil
	})
}

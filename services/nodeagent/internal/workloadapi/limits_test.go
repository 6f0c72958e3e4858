package workloadapi_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sdslimits"
)

type nopLimitObserver struct{}

func (nopLimitObserver) LimitRefused(string) {}
func (nopLimitObserver) Unauthenticated(int) {}

// A pod's watches count against the per-pod stream limit SDS streams count against.
func TestWatchesCountAgainstThePodsStreamLimit(t *testing.T) {
	limits, err := sdslimits.New(sdslimits.Config{FirstRequestTimeout: time.Minute, MaxUnauthenticated: 10,
		MaxStreamsPerConn: 10, MaxStreamsPerCaller: 1, Observer: nopLimitObserver{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, options{callers: limits})
	ctx, cancel := context.WithCancel(withHeader(testCtx(t)))
	defer cancel()
	api := workloadpb.NewSpiffeWorkloadAPIClient(h.rawPodConn(t, cart))
	first, err := api.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil {
		t.Fatal(err)
	}
	second, err := api.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = second.Recv()
	requireStatus(t, err, codes.ResourceExhausted, "shop/cart-1/"+cart.PodUID+" already holds 1 streams (SDS and Workload API) on this agent, at most 1 are allowed per pod")
}

type recordingObserver struct {
	mu    sync.Mutex
	calls map[string]int
	hits  map[bool]int
}

func (o *recordingObserver) Called(method string, code codes.Code) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls[method+" "+code.String()]++
}
func (o *recordingObserver) WatchOpened(string) {}
func (o *recordingObserver) WatchClosed(string) {}
func (o *recordingObserver) JWTSVIDCache(hit bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.hits[hit]++
}

func TestCallsAndCacheAreObserved(t *testing.T) {
	obs := &recordingObserver{calls: map[string]int{}, hits: map[bool]int{}}
	h := newHarness(t, options{observe: obs})
	c := h.client(t, cart)
	for range 3 {
		if _, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "web"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{}); err == nil {
		t.Fatal("no audience accepted")
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.calls["FetchJWTSVID OK"] != 3 || obs.calls["FetchJWTSVID InvalidArgument"] != 1 || obs.hits[true] != 2 || obs.hits[false] != 1 {
		t.Fatalf("observed calls %v, cache %v", obs.calls, obs.hits)
	}
}

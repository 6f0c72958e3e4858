package sds_test

import (
	"context"
	"runtime"
	"sync"
	"testing"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/config"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sdslimits"
)

// BenchmarkIdleStreamFlood is the hostile-input review's case: 5,000 streams that never send a
// request, over 10 connections. Without limits all were held, forever; with the agent's default
// limits at most -sds-max-unauthenticated-streams are held, and only until the first-request
// deadline. It reports the streams held and refused and the agent's heap while they are held.
func BenchmarkIdleStreamFlood(b *testing.B) {
	defaults := sdslimits.Config{
		FirstRequestTimeout: config.DefaultSDSFirstRequestTimeout, MaxUnauthenticated: config.DefaultSDSMaxUnauthenticated,
		MaxStreamsPerConn: config.DefaultSDSMaxStreamsPerConn, MaxStreamsPerCaller: config.DefaultSDSMaxStreamsPerCaller,
	}
	for _, bc := range []struct {
		name   string
		limits *sdslimits.Config
	}{{"unlimited", nil}, {"defaults", &defaults}} {
		b.Run(bc.name, func(b *testing.B) {
			const conns, perConn = 10, 500
			for b.Loop() {
				h := newHarness(b, options{limits: bc.limits})
				before := heapAlloc()
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				for range conns {
					c := rawClient(b, h)
					for range perConn {
						st, err := c.StreamSecrets(ctx)
						if err != nil {
							b.Fatal(err)
						}
						wg.Go(func() { _, _ = st.Recv() })
					}
				}
				refused := func() int { return h.obs.limitRefusals(sdslimits.ReasonUnauthenticated) }
				eventually(b, "every stream held or refused", func() bool { return h.obs.openStreams()+refused() == conns*perConn })
				held := h.obs.openStreams()
				during := heapAlloc()
				h.clk.Step(config.DefaultSDSFirstRequestTimeout)
				timedOut := h.obs.limitRefusals(sdslimits.ReasonFirstRequestTimeout)
				if bc.limits != nil {
					eventually(b, "the held streams to end at the deadline", func() bool { return h.obs.openStreams() == 0 })
				}
				b.ReportMetric(float64(held), "held")
				b.ReportMetric(float64(refused()), "refused")
				b.ReportMetric(float64(timedOut), "timed-out")
				b.ReportMetric(float64(h.obs.openStreams()), "held-after-deadline")
				b.ReportMetric(float64(during-before)/(1<<20), "MiB-heap-held")
				cancel()
				wg.Wait()
			}
		})
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

package e2e

import (
	"context"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/tools/sdsload"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// Sizes of the SDS load benchmarks: issue 3's targets by default, a quick look under -short
// (which `go tool task test` uses to run every benchmark once, so that a broken one fails).
var (
	loadPods          = flag.Int("sds-pods", 0, "BenchmarkSDSBundleFanout: pods on the node, one identity each (0: 100, or 10 with -short)")
	loadStreamsPerPod = flag.Int("sds-streams-per-pod", 0, "BenchmarkSDSBundleFanout: SDS streams per pod (0: 100, or 10 with -short)")
	burstPods         = flag.Int("burst-pods", 0, "BenchmarkNewPodBurst: new pods, one identity each, asking at once (0: 1000, or 50 with -short)")
)

// size is *flag, or def (small under -short) when the flag is not set.
func size(flag *int, def, short int) int {
	switch {
	case *flag > 0:
		return *flag
	case testing.Short():
		return short
	}
	return def
}

// loadStack starts a one-node stack serving pods generated pods (one identity each) and stops
// it when t ends.
func loadStack(b testing.TB, pods int, extra map[string][]string) (*stack.Stack, []stack.Pod) {
	b.Helper()
	dir, err := os.MkdirTemp("", "pc-load-") // short: Unix socket paths are limited to 108 bytes
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, ps, err := sdsload.StartStack(ctx, binDir, dir, pods, pods, extra)
	if err != nil {
		os.RemoveAll(dir)
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Stop(); err != nil {
			b.Error(err)
		}
		os.RemoveAll(dir)
	})
	return s, ps
}

// BenchmarkSDSBundleFanout: one agent holds -sds-pods x -sds-streams-per-pod StreamSecrets
// streams (100 per connection), each watching default and ROOTCA. One op is a trust-bundle change
// (RotateCA PREPARE through kms-adapter's admin API, announced on NATS) until every stream has the
// new root; the reported percentiles are over every stream of every op, from the start of the
// RotateCA call. Between ops (timer stopped) the rotation is finished (activate, retire) and
// waited for.
func BenchmarkSDSBundleFanout(b *testing.B) {
	b.Setenv(lifecycle.ProfilingEnv, "1") // heap figures after a GC the agent is asked to run
	s, pods := loadStack(b, size(loadPods, 100, 10), sdsload.RotationExtra)
	ctx := context.Background()
	l, err := sdsload.StartLoad(ctx, sdsload.LoadConfig{Stack: s, Node: sdsload.Node, Pods: pods,
		Fleet: sdsload.FleetConfig{StreamsPerSidecar: size(loadStreamsPerPod, 100, 10), StreamsPerConn: 100, Opening: 200}})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.Logf("opened %d streams in %s (first response %s); %s", l.Fleet.Len(), l.Open.Round(time.Millisecond), l.FirstResponse, l.Memory)
	var all []time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i > 0 {
			b.StopTimer()
			if err := l.Settle(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		d, err := l.RotateBundle(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("bundle change %d: %s", i+1, sdsload.Summarize(d))
		all = append(all, d...)
	}
	b.StopTimer()
	sum := sdsload.Summarize(all)
	b.ReportMetric(float64(l.Fleet.Len()), "streams")
	b.ReportMetric(ms(sum.P50), "p50-ms")
	b.ReportMetric(ms(sum.P99), "p99-ms")
	b.ReportMetric(ms(sum.Max), "max-ms")
	b.ReportMetric(l.Memory.RSSPerStream()/1024, "rss-KiB/stream")
	b.ReportMetric(l.Memory.HeapPerStream()/1024, "heap-KiB/stream")
	b.ReportMetric(l.Memory.StackPerStream()/1024, "stack-KiB/stream")
}

// BenchmarkNewPodBurst: -burst-pods new pods with distinct identities on one node each open an
// SDS stream (own connection) at the same moment. One op is a fresh stack (timer stopped) and the
// burst until every pod has its first response; it fails unless kms-adapter signed exactly one
// certificate per identity.
func BenchmarkNewPodBurst(b *testing.B) {
	var served, signs float64
	b.Setenv(lifecycle.ProfilingEnv, "1") // as in BenchmarkSDSBundleFanout
	for range b.N {
		b.StopTimer()
		s, pods := loadStack(b, size(burstPods, 1000, 50), nil)
		b.StartTimer()
		r, err := sdsload.Burst(context.Background(), s, sdsload.Node, pods)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		b.Log(r)
		if r.Signatures != float64(len(pods)) {
			b.Fatalf("%v KMS signatures for %d identities", r.Signatures, len(pods))
		}
		served, signs = served+r.Served.Seconds(), signs+r.Signatures
		if err := s.Stop(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(served/float64(b.N), "served-s")
	b.ReportMetric(signs/float64(b.N), "kms-signs")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

package snapshot

import (
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// Scale of the benchmark cluster: the target (pods: see benchPods).
const (
	benchNodes      = 1_000
	benchNamespaces = 100
	benchSecrets    = 1_000 // KeySecrets, each selecting the pods of one app
)

// benchPods is the 100,000 pods, or 10,000 under -short: `go tool task test` runs every
// benchmark once to see that it works, not to measure it.
func benchPods() int {
	if testing.Short() {
		return 10_000
	}
	return 100_000
}

// benchClusterDelay is what mcp-sync runs with (app.clusterViewDelay).
const benchClusterDelay = 100 * time.Millisecond

func benchPod(i int) *mcpv1.Pod {
	ns := fmt.Sprintf("ns-%03d", i%benchNamespaces)
	name := fmt.Sprintf("app-%05d-%06d", i%benchSecrets, i)
	return &mcpv1.Pod{
		Name: ns + "/" + name, Namespace: ns, PodName: name,
		Uid:      fmt.Sprintf("00000000-0000-0000-0000-%012d", i),
		NodeName: fmt.Sprintf("node-%04d", i%benchNodes), ServiceAccount: fmt.Sprintf("sa-%05d", i%benchSecrets),
		Labels: map[string]string{"app": fmt.Sprintf("app-%05d", i%benchSecrets), "tier": "backend", "version": "v1"},
		PodIp:  fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
	}
}

func benchCluster() inventory.Update {
	var u inventory.Update
	u.Full = true
	for i := range benchPods() {
		p := benchPod(i)
		u.Changes = append(u.Changes, inventory.Change{Kind: inventory.Pod, Name: p.Name, Object: p})
	}
	for i := range benchSecrets {
		ns := fmt.Sprintf("ns-%03d", i%benchNamespaces)
		sa := &mcpv1.ServiceAccount{Name: fmt.Sprintf("%s/sa-%05d", ns, i), Namespace: ns, ServiceAccount: fmt.Sprintf("sa-%05d", i)}
		ks := &mcpv1.KeySecret{Name: fmt.Sprintf("%s/key-%05d", ns, i), Namespace: ns, KeySecretName: fmt.Sprintf("key-%05d", i),
			Selector: &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%05d", i)}},
			Data:     map[string][]byte{"token": make([]byte, 64)}}
		u.Changes = append(u.Changes,
			inventory.Change{Kind: inventory.ServiceAccount, Name: sa.Name, Object: sa},
			inventory.Change{Kind: inventory.KeySecret, Name: ks.Name, Object: ks})
	}
	for i := range benchNamespaces {
		ns := &mcpv1.Namespace{Name: fmt.Sprintf("ns-%03d", i)}
		u.Changes = append(u.Changes, inventory.Change{Kind: inventory.Namespace, Name: ns.Name, Object: ns})
	}
	return u
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkPodChange100kPods1kNodes loads 100,000 pods on 1,000 nodes (plus 1,000 service
// accounts and KeySecrets, 100 namespaces), then changes one pod per iteration. It reports the
// heap the loaded manager holds (the source's objects included), the p50/p99 of one change
// (until its node's view and the cluster view are in the cache), and the bytes of one node's
// view as an agent receives it (every type, wrapped in Any as on the wire).
func BenchmarkPodChange100kPods1kNodes(b *testing.B) {
	before := heapInUse()
	m, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics.New(prometheus.NewRegistry()),
		ClusterDelay: benchClusterDelay})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := m.Apply(benchCluster()); err != nil {
		b.Fatal(err)
	}
	loadTime := time.Since(start)
	heap := heapInUse() - before

	durations := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		p := proto.Clone(benchPod((i * 7919) % benchPods())).(*mcpv1.Pod)
		p.Labels["version"] = fmt.Sprintf("v%d", i+2) // a real change every time
		t0 := time.Now()
		if err := m.Apply(inventory.Update{Changes: []inventory.Change{{Kind: inventory.Pod, Name: p.Name, Object: p}}}); err != nil {
			b.Fatal(err)
		}
		durations = append(durations, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(durations)
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
	b.ReportMetric(loadTime.Seconds(), "load-s")
	b.ReportMetric(float64(durations[len(durations)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(durations[len(durations)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(viewBytes(b, m, "node-0001", TypeURLs()...)), "bytes/agent")
	// A pod change resends the node's pod set (state of the world): this is what one change
	// costs the agent of its node, and no other agent.
	b.ReportMetric(float64(viewBytes(b, m, "node-0001", mcpclient.PodTypeURL)), "bytes/change")
	runtime.KeepAlive(m)
}

// viewBytes is the wire size of the given types of a node's view: its resources as Any messages.
func viewBytes(b *testing.B, m *Manager, node string, typeURLs ...string) int {
	m.mu.Lock()
	s := m.viewLocked(node)
	m.mu.Unlock()
	total := 0
	for _, url := range typeURLs {
		for _, r := range s.GetResources(url) {
			a, err := anypb.New(r)
			if err != nil {
				b.Fatal(err)
			}
			total += proto.Size(a)
		}
	}
	return total
}

package kube_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/snapshot"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/kube"
	"github.com/portcullis-mesh/portcullis/tools/kubetest"
)

const apiBenchNodes = 50

// apiBenchPods is 5,000 pods, or 500 under -short: `go tool task test` runs every benchmark once
// to see that it works, not to measure it.
func apiBenchPods() int {
	if testing.Short() {
		return 500
	}
	return 5_000
}

// BenchmarkPodChangeThroughAPIServer: 5,000 pods on 50 nodes in a real kube-apiserver, watched by
// the kube source feeding the snapshot manager in process. Each iteration relabels one pod
// through the API and waits until its node's view holds the change: the p99 covers the API
// write, the watch event, conversion and the node view. heap-MiB is the Go heap after the
// initial list (informer caches, objects and views).
func BenchmarkPodChangeThroughAPIServer(b *testing.B) {
	crds, err := kubetest.ChartCRDs()
	if err != nil {
		b.Fatal(err)
	}
	c := kubetest.Start(b, kubetest.Options{CRDDirs: []string{crds}})
	ctx := context.Background()
	objs, _ := kubetest.ParseManifests([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n"))
	if err := c.ApplyObjects(ctx, objs...); err != nil {
		b.Fatal(err)
	}
	createStart := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < apiBenchPods(); i += 8 {
				_, err := c.Client.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%05d", i), Labels: map[string]string{"app": "web", "rev": "0"}},
					Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%03d", i%apiBenchNodes), ServiceAccountName: "web",
						Containers: []corev1.Container{{Name: "app", Image: "app"}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	createTime := time.Since(createStart)

	before := heap()
	mgr, err := snapshot.New(snapshot.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: metrics.New(prometheus.NewRegistry()), ClusterDelay: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	applied := make(chan []inventory.Change, 16)
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		b.Fatal(err)
	}
	src, err := kube.New(kube.Config{Dynamic: dyn, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	listStart := time.Now()
	go func() {
		done <- src.Run(runCtx, func(u inventory.Update) {
			if err := mgr.Apply(u); err != nil {
				b.Error(err)
			}
			select {
			case applied <- u.Changes:
			default: // the benchmark is not waiting
			}
		})
	}()
	defer func() { cancel(); <-done }()
	<-applied // the full initial update
	listTime := time.Since(listStart)
	heapMiB := float64(heap()-before) / (1 << 20)

	durations := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("web-%05d", (i*97)%apiBenchPods())
		rev := fmt.Sprint(i + 1)
		t0 := time.Now()
		p, err := c.Client.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		p.Labels["rev"] = rev
		if _, err := c.Client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		for !nodeViewHas(mgr, p.Spec.NodeName, "shop/"+name, rev) {
			select {
			case <-applied:
			case <-time.After(10 * time.Second):
				b.Fatalf("change %d never reached the node view", i)
			}
		}
		durations = append(durations, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(durations)
	b.ReportMetric(heapMiB, "heap-MiB")
	b.ReportMetric(createTime.Seconds(), "create-s")
	b.ReportMetric(listTime.Seconds(), "list-s")
	b.ReportMetric(float64(durations[len(durations)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(durations[len(durations)*99/100].Microseconds())/1000, "p99-ms")
}

func nodeViewHas(m *snapshot.Manager, node, pod, rev string) bool {
	s, err := m.Cache().(cache.SnapshotCache).GetSnapshot(node)
	if err != nil {
		return false
	}
	p, ok := s.GetResources(mcpclient.PodTypeURL)[pod].(*mcpv1.Pod)
	return ok && p.GetLabels()["rev"] == rev
}

func heap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

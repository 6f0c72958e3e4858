package snapshot

import (
	"io"
	"log/slog"
	"maps"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

func newManager(t *testing.T) (*Manager, *metrics.Metrics) {
	t.Helper()
	m := metrics.New(prometheus.NewRegistry())
	mgr, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	return mgr, m
}

func pod(ns, name, node string) *mcpv1.Pod {
	return &mcpv1.Pod{Name: ns + "/" + name, Namespace: ns, PodName: name, NodeName: node, ServiceAccount: "default"}
}

func state(pods ...*mcpv1.Pod) inventory.State {
	return inventory.State{
		Pods:            pods,
		ServiceAccounts: []*mcpv1.ServiceAccount{{Name: "shop/web", Namespace: "shop", ServiceAccount: "web"}},
		Namespaces:      []*mcpv1.Namespace{{Name: "shop"}},
	}
}

func view(t *testing.T, m *Manager, node string) *Snapshot {
	t.Helper()
	s, err := m.cache.GetSnapshot(node)
	if err != nil {
		t.Fatalf("no snapshot for %q: %v", node, err)
	}
	return s.(*Snapshot)
}

func names(s *Snapshot, typeURL string) []string {
	return slices.Sorted(maps.Keys(s.GetResources(typeURL)))
}

func TestSplitsPodsByNode(t *testing.T) {
	m, met := newManager(t)
	if err := m.Update(state(pod("shop", "a1", "node-a"), pod("shop", "a2", "node-a"), pod("shop", "b1", "node-b"), pod("shop", "pending", ""))); err != nil {
		t.Fatal(err)
	}
	for node, want := range map[string][]string{
		"node-a":                {"shop/a1", "shop/a2"},
		"node-b":                {"shop/b1"},
		mcpclient.ClusterNodeID: {"shop/a1", "shop/a2", "shop/b1", "shop/pending"},
	} {
		s := view(t, m, node)
		if got := names(s, mcpclient.PodTypeURL); !slices.Equal(got, want) {
			t.Errorf("%s pods = %v, want %v", node, got, want)
		}
		if got := names(s, mcpclient.ServiceAccountTypeURL); !slices.Equal(got, []string{"shop/web"}) {
			t.Errorf("%s service accounts = %v", node, got)
		}
		if got := names(s, mcpclient.NamespaceTypeURL); !slices.Equal(got, []string{"shop"}) {
			t.Errorf("%s namespaces = %v", node, got)
		}
		if s.GetVersion("type.googleapis.com/other") != "" || len(s.GetResources("type.googleapis.com/other")) != 0 {
			t.Errorf("%s serves an unknown type", node)
		}
	}
	if got := testutil.ToFloat64(met.Objects.WithLabelValues(metrics.KindPod)); got != 4 {
		t.Errorf("pod objects metric = %v, want 4", got)
	}
	if !m.Loaded() {
		t.Error("Loaded() = false after Update")
	}
}

func TestVersionsChangeOnlyWhereContentChanged(t *testing.T) {
	m, met := newManager(t)
	a1, b1 := pod("shop", "a1", "node-a"), pod("shop", "b1", "node-b")
	if err := m.Update(state(a1, b1)); err != nil {
		t.Fatal(err)
	}
	beforeA, beforeB, beforeAll := view(t, m, "node-a"), view(t, m, "node-b"), view(t, m, mcpclient.ClusterNodeID)
	updates := testutil.ToFloat64(met.SnapshotUpdates)

	// A pod changes on node-a only.
	a1changed := pod("shop", "a1", "node-a")
	a1changed.PodIp = "10.0.0.9"
	if err := m.Update(state(a1changed, b1)); err != nil {
		t.Fatal(err)
	}
	afterA, afterB, afterAll := view(t, m, "node-a"), view(t, m, "node-b"), view(t, m, mcpclient.ClusterNodeID)
	if afterA.GetVersion(mcpclient.PodTypeURL) == beforeA.GetVersion(mcpclient.PodTypeURL) {
		t.Error("node-a pod version did not change")
	}
	if afterAll.GetVersion(mcpclient.PodTypeURL) == beforeAll.GetVersion(mcpclient.PodTypeURL) {
		t.Error("cluster pod version did not change")
	}
	if afterB != beforeB {
		t.Error("node-b's snapshot was replaced although its content did not change")
	}
	for _, url := range []string{mcpclient.ServiceAccountTypeURL, mcpclient.NamespaceTypeURL} {
		if afterA.GetVersion(url) != beforeA.GetVersion(url) {
			t.Errorf("node-a %s version changed", url)
		}
	}
	if got := testutil.ToFloat64(met.SnapshotUpdates) - updates; got != 2 {
		t.Errorf("snapshot updates = %v, want 2 (node-a and the cluster view)", got)
	}

	// The same content again replaces nothing.
	updates = testutil.ToFloat64(met.SnapshotUpdates)
	if err := m.Update(state(pod("shop", "b1", "node-b"), a1changed)); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(met.SnapshotUpdates) - updates; got != 0 {
		t.Errorf("snapshot updates for unchanged content = %v, want 0", got)
	}
}

func TestNodeLosingItsLastPodGetsAnEmptySet(t *testing.T) {
	m, _ := newManager(t)
	if err := m.Update(state(pod("shop", "a1", "node-a"))); err != nil {
		t.Fatal(err)
	}
	m.Acquire("node-a") // node-a's agent is connected
	before := view(t, m, "node-a").GetVersion(mcpclient.PodTypeURL)

	if err := m.Update(state()); err != nil {
		t.Fatal(err)
	}
	s := view(t, m, "node-a")
	if got := names(s, mcpclient.PodTypeURL); len(got) != 0 {
		t.Errorf("node-a pods = %v, want none", got)
	}
	if v := s.GetVersion(mcpclient.PodTypeURL); v == before || v == "" {
		t.Errorf("empty pod set version = %q (before %q): must be new and non-empty so clients receive it", v, before)
	}

	// Once its last stream closes, a node without pods is forgotten.
	m.Release("node-a")
	if _, err := m.cache.GetSnapshot("node-a"); err == nil {
		t.Error("node-a still has a snapshot with no pods and no streams")
	}
}

func TestNodeWithoutPodsGetsAViewWhenItConnects(t *testing.T) {
	m, _ := newManager(t)
	m.Acquire("node-c") // connects before the first state
	if _, err := m.cache.GetSnapshot("node-c"); err == nil {
		t.Fatal("a view exists before the first state: clients would take it for the cluster")
	}
	if err := m.Update(state(pod("shop", "a1", "node-a"))); err != nil {
		t.Fatal(err)
	}
	if got := names(view(t, m, "node-c"), mcpclient.PodTypeURL); len(got) != 0 {
		t.Errorf("node-c pods = %v, want none", got)
	}
	m.Acquire("node-d") // connects after the first state
	if got := names(view(t, m, "node-d"), mcpclient.NamespaceTypeURL); !slices.Equal(got, []string{"shop"}) {
		t.Errorf("node-d namespaces = %v, want [shop]", got)
	}
	// A node with pods keeps its view without streams; two streams need two releases.
	m.Acquire("node-a")
	m.Acquire("node-d")
	m.Release("node-a")
	m.Release("node-d")
	view(t, m, "node-a")
	view(t, m, "node-d")
	m.Release("node-d")
	if _, err := m.cache.GetSnapshot("node-d"); err == nil {
		t.Error("node-d kept its view after its last stream closed")
	}
}

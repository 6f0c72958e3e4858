package snapshot

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

func keySecret(ns, name string, labels map[string]string, data string) *mcpv1.KeySecret {
	return &mcpv1.KeySecret{Name: ns + "/" + name, Namespace: ns, KeySecretName: name,
		Selector: &mcpv1.LabelSelector{MatchLabels: labels}, Data: map[string][]byte{"k": []byte(data)}}
}

func labelled(p *mcpv1.Pod, labels map[string]string) *mcpv1.Pod { p.Labels = labels; return p }

func set(o inventory.Object, kind inventory.Kind) inventory.Change {
	return inventory.Change{Kind: kind, Name: o.GetName(), Object: o}
}

func apply(t *testing.T, m *Manager, full bool, changes ...inventory.Change) {
	t.Helper()
	if err := m.Apply(inventory.Update{Full: full, Changes: changes}); err != nil {
		t.Fatal(err)
	}
}

// TestKeySecretsGoOnlyToNodesHostingSelectedPods follows a KeySecret as pods come, go, move and
// change labels, and as the secret's selector and data change.
func TestKeySecretsGoOnlyToNodesHostingSelectedPods(t *testing.T) {
	m, _ := newManager(t)
	web := map[string]string{"app": "web"}
	apply(t, m, true,
		set(labelled(pod("shop", "a1", "node-a"), web), inventory.Pod),
		set(pod("shop", "b1", "node-b"), inventory.Pod),
		set(labelled(pod("other", "c1", "node-c"), web), inventory.Pod), // same labels, other namespace
		set(keySecret("shop", "api", web, "v1"), inventory.KeySecret),
		set(&mcpv1.TLSPolicy{Name: "shop/strict", ServerMode: mcpv1.TLSPolicy_SERVER_MODE_STRICT}, inventory.TLSPolicy),
	)
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		m.Acquire(n) // agents connected: nodes keep a view without pods
	}
	secretsOn := func(node string) []string { return names(view(t, m, node), mcpclient.KeySecretTypeURL) }
	check := func(step string, want map[string][]string) {
		t.Helper()
		for node, w := range want {
			if got := secretsOn(node); !slices.Equal(got, w) {
				t.Errorf("%s: %s key secrets = %v, want %v", step, node, got, w)
			}
		}
	}
	check("start", map[string][]string{"node-a": {"shop/api"}, "node-b": nil, "node-c": nil, mcpclient.ClusterNodeID: nil})
	for _, node := range []string{"node-a", "node-b", mcpclient.ClusterNodeID} {
		if got := names(view(t, m, node), mcpclient.TLSPolicyTypeURL); !slices.Equal(got, []string{"shop/strict"}) {
			t.Errorf("%s policies = %v: policies go to every view", node, got)
		}
	}

	// b1 gains the label: node-b gets the secret.
	apply(t, m, false, set(labelled(pod("shop", "b1", "node-b"), web), inventory.Pod))
	check("b1 labelled", map[string][]string{"node-a": {"shop/api"}, "node-b": {"shop/api"}})

	// a1 moves to node-c (a new pod with the same name): node-a loses the secret.
	apply(t, m, false, set(labelled(pod("shop", "a1", "node-c"), web), inventory.Pod))
	check("a1 moved", map[string][]string{"node-a": nil, "node-b": {"shop/api"}, "node-c": {"shop/api"}})

	// New data reaches the nodes holding the secret, and only them.
	before := view(t, m, "node-b").GetVersion(mcpclient.KeySecretTypeURL)
	apply(t, m, false, set(keySecret("shop", "api", web, "v2"), inventory.KeySecret))
	got := view(t, m, "node-b").GetResources(mcpclient.KeySecretTypeURL)["shop/api"].(*mcpv1.KeySecret)
	if string(got.GetData()["k"]) != "v2" || view(t, m, "node-b").GetVersion(mcpclient.KeySecretTypeURL) == before {
		t.Errorf("node-b did not get the new data: %v", got)
	}

	// The selector narrows to a pod IP: only that instance's node keeps it.
	ip := labelled(pod("shop", "b1", "node-b"), web)
	ip.PodIp = "10.0.0.7"
	apply(t, m, false, set(ip, inventory.Pod),
		set(keySecret("shop", "api", map[string]string{"security.portcullis.dev/pod-ip": "10.0.0.7"}, "v2"), inventory.KeySecret))
	check("by pod ip", map[string][]string{"node-b": {"shop/api"}, "node-c": nil})

	// Deleted: gone everywhere.
	apply(t, m, false, inventory.Change{Kind: inventory.KeySecret, Name: "shop/api"})
	check("deleted", map[string][]string{"node-b": nil, "node-c": nil})
}

// TestPodChangeTouchesOnlyItsNode: with many nodes, one pod's change replaces its node's view and
// the cluster view, and no other.
func TestPodChangeTouchesOnlyItsNode(t *testing.T) {
	m, met := newManager(t)
	var changes []inventory.Change
	for n := range 50 {
		for p := range 4 {
			changes = append(changes, set(pod("shop", nodeName(n)+"-"+string(rune('a'+p)), nodeName(n)), inventory.Pod))
		}
	}
	apply(t, m, true, changes...)
	others := map[string]*Snapshot{}
	for n := 1; n < 50; n++ {
		others[nodeName(n)] = view(t, m, nodeName(n))
	}
	updates := testutil.ToFloat64(met.SnapshotUpdates)

	moved := pod("shop", nodeName(0)+"-a", nodeName(0))
	moved.PodIp = "10.1.1.1"
	apply(t, m, false, set(moved, inventory.Pod))
	if got := testutil.ToFloat64(met.SnapshotUpdates) - updates; got != 2 {
		t.Errorf("snapshot updates = %v, want 2 (its node and the cluster view)", got)
	}
	for n, s := range others {
		if view(t, m, n) != s {
			t.Errorf("%s's view was replaced by a change on another node", n)
		}
	}
	if got := view(t, m, nodeName(0)).GetResources(mcpclient.PodTypeURL)[moved.GetName()].(*mcpv1.Pod).GetPodIp(); got != "10.1.1.1" {
		t.Errorf("the changed pod reads pod IP %q", got)
	}
	// A removal, and a duplicate of the current content.
	apply(t, m, false, inventory.Change{Kind: inventory.Pod, Name: moved.GetName()})
	updates = testutil.ToFloat64(met.SnapshotUpdates)
	apply(t, m, false, set(pod("shop", nodeName(1)+"-a", nodeName(1)), inventory.Pod))
	if got := testutil.ToFloat64(met.SnapshotUpdates) - updates; got != 0 {
		t.Errorf("a duplicate change replaced %v snapshots", got)
	}
	if got := len(view(t, m, mcpclient.ClusterNodeID).GetResources(mcpclient.PodTypeURL)); got != 199 {
		t.Errorf("cluster view has %d pods, want 199", got)
	}
}

func nodeName(n int) string { return "node-" + string(rune('A'+n/26)) + string(rune('a'+n%26)) }

// TestClusterViewIsCoalesced: with a ClusterDelay, node views change at once and the cluster view
// once the delay has passed, with every change made meanwhile.
func TestClusterViewIsCoalesced(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	m, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics.New(prometheus.NewRegistry()),
		ClusterDelay: time.Second, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	apply(t, m, true, set(pod("shop", "a1", "node-a"), inventory.Pod))
	if got := names(view(t, m, mcpclient.ClusterNodeID), mcpclient.PodTypeURL); !slices.Equal(got, []string{"shop/a1"}) {
		t.Fatalf("the first update is not in the cluster view at once: %v", got)
	}
	// Changes right after a rebuild wait for the delay.
	apply(t, m, false, set(pod("shop", "a2", "node-a"), inventory.Pod))
	apply(t, m, false, set(pod("shop", "b1", "node-b"), inventory.Pod))
	if got := names(view(t, m, "node-b"), mcpclient.PodTypeURL); !slices.Equal(got, []string{"shop/b1"}) {
		t.Errorf("node-b = %v: node views must not wait", got)
	}
	if got := names(view(t, m, mcpclient.ClusterNodeID), mcpclient.PodTypeURL); len(got) != 1 {
		t.Errorf("cluster view changed before the delay: %v", got)
	}
	clk.Step(time.Second)
	if got := names(view(t, m, mcpclient.ClusterNodeID), mcpclient.PodTypeURL); !slices.Equal(got, []string{"shop/a1", "shop/a2", "shop/b1"}) {
		t.Errorf("cluster view after the delay = %v", got)
	}
	// After a quiet period, a change is applied at once.
	clk.Step(time.Second)
	apply(t, m, false, set(pod("shop", "c1", "node-c"), inventory.Pod))
	if got := names(view(t, m, mcpclient.ClusterNodeID), mcpclient.PodTypeURL); len(got) != 4 {
		t.Errorf("an isolated change waited: cluster view = %v", got)
	}
}

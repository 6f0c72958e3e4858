package snapshot

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/xdslog"
)

// Config configures a Manager.
type Config struct {
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Manager keeps go-control-plane's snapshot cache in step with the source's state and with the
// nodes that have streams open. It is safe for concurrent use.
//
// A node has a snapshot while it has pods or open streams; the cluster view
// (mcpclient.ClusterNodeID) always has one. Nothing is served before the first state arrives, so
// that no client mistakes an empty start-up view for the cluster.
type Manager struct {
	cfg   Config
	cache cache.SnapshotCache

	mu              sync.Mutex
	loaded          bool
	podsByNode      map[string]*typeSet
	allPods         *typeSet
	serviceAccounts *typeSet
	namespaces      *typeSet
	streams         map[string]int       // open streams by node ID
	current         map[string]*Snapshot // what the cache holds, by node ID
}

// New returns a Manager with an empty cache.
func New(cfg Config) (*Manager, error) {
	if cfg.Logger == nil || cfg.Metrics == nil {
		return nil, errors.New("snapshot manager needs a logger and metrics")
	}
	return &Manager{
		cfg: cfg,
		// ads=true: the cache answers a request that names resources only once the view holds
		// all of them, which keeps per-type responses consistent on aggregated streams.
		cache:   cache.NewSnapshotCache(true, cache.IDHash{}, xdslog.New(cfg.Logger)),
		streams: map[string]int{},
		current: map[string]*Snapshot{},
	}, nil
}

// Cache is what the xDS server serves from.
func (m *Manager) Cache() cache.Cache { return m.cache }

// Loaded reports whether the first state has arrived.
func (m *Manager) Loaded() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.loaded
}

// Update replaces the state. Only the views whose content changed are replaced in the cache, so
// a change on one node pushes nothing to the others.
func (m *Manager) Update(st inventory.State) error {
	pods := make(map[string][]item)
	var all []item
	for _, p := range st.Pods {
		it, err := newItem(p.GetName(), p)
		if err != nil {
			return err
		}
		all = append(all, it)
		// An unscheduled pod belongs to no node yet; only the cluster view has it.
		if p.GetNodeName() != "" {
			pods[p.GetNodeName()] = append(pods[p.GetNodeName()], it)
		}
	}
	sas := make([]item, 0, len(st.ServiceAccounts))
	for _, sa := range st.ServiceAccounts {
		it, err := newItem(sa.GetName(), sa)
		if err != nil {
			return err
		}
		sas = append(sas, it)
	}
	nss := make([]item, 0, len(st.Namespaces))
	for _, ns := range st.Namespaces {
		it, err := newItem(ns.GetName(), ns)
		if err != nil {
			return err
		}
		nss = append(nss, it)
	}
	byNode := make(map[string]*typeSet, len(pods))
	for node, items := range pods {
		byNode[node] = newTypeSet(items)
	}
	allPods, saSet, nsSet := newTypeSet(all), newTypeSet(sas), newTypeSet(nss)

	m.cfg.Metrics.Objects.WithLabelValues(metrics.KindPod).Set(float64(len(st.Pods)))
	m.cfg.Metrics.Objects.WithLabelValues(metrics.KindServiceAccount).Set(float64(len(st.ServiceAccounts)))
	m.cfg.Metrics.Objects.WithLabelValues(metrics.KindNamespace).Set(float64(len(st.Namespaces)))

	m.mu.Lock()
	defer m.mu.Unlock()
	m.loaded = true
	m.podsByNode, m.allPods, m.serviceAccounts, m.namespaces = byNode, allPods, saSet, nsSet
	want := map[string]bool{mcpclient.ClusterNodeID: true}
	for node := range byNode {
		want[node] = true
	}
	for node := range m.streams {
		want[node] = true
	}
	for node := range want {
		m.setLocked(node)
	}
	for node := range m.current {
		if !want[node] {
			m.cache.ClearSnapshot(node)
			delete(m.current, node)
		}
	}
	return nil
}

// Acquire records that a stream subscribes as node. A node that connects before it has any pods
// gets an empty view at once (after the first state), instead of waiting for its first pod.
func (m *Manager) Acquire(node string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.streams[node]++
	if m.loaded {
		m.setLocked(node)
	}
}

// Release records that a stream of node closed. Call it once per Acquire, after the stream's
// watches are cancelled. A node without streams and pods is dropped from the cache.
func (m *Manager) Release(node string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.streams[node]--; m.streams[node] > 0 {
		return
	}
	delete(m.streams, node)
	if _, hasPods := m.podsByNode[node]; hasPods || node == mcpclient.ClusterNodeID {
		return
	}
	m.cache.ClearSnapshot(node)
	delete(m.current, node)
}

// setLocked puts node's view in the cache unless the cache already holds the same content.
func (m *Manager) setLocked(node string) {
	snap := m.viewLocked(node)
	if cur, ok := m.current[node]; ok && cur.sameAs(snap) {
		return
	}
	// SetSnapshot fails only when its context ends while it hands a response to a stream.
	if err := m.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		m.cfg.Logger.Error("setting snapshot", "node", node, "err", err)
		return
	}
	m.current[node] = snap
	m.cfg.Metrics.SnapshotUpdates.Inc()
}

func (m *Manager) viewLocked(node string) *Snapshot {
	pods := m.allPods
	if node != mcpclient.ClusterNodeID {
		pods = m.podsByNode[node]
		if pods == nil {
			pods = newTypeSet(nil)
		}
	}
	return newSnapshot(pods, m.serviceAccounts, m.namespaces)
}

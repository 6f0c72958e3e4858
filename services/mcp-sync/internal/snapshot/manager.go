package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/xdslog"
)

// Config configures a Manager.
type Config struct {
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// ClusterDelay coalesces the cluster view's pod changes: the view is rebuilt at most once per
	// ClusterDelay, after the node views (copying 100,000 pods on every change would sit on every
	// change's path, and so would sending them all to citadel). A change after a quiet period is
	// applied at once. 0 rebuilds it with every update.
	ClusterDelay time.Duration
	// Clock runs the ClusterDelay timer; nil means the real clock.
	Clock clock.WithDelayedExecution
}

// Manager keeps go-control-plane's snapshot cache in step with the source's changes and with the
// nodes that have streams open. It is safe for concurrent use.
//
// Updates are incremental: a pod change rebuilds only its node's pod set (and the cluster view),
// a KeySecret change only the sets of the nodes hosting pods it selects, and the shared kinds
// (service accounts, namespaces, policies) are one set referenced by every view. Memory is
// therefore proportional to the objects, not to objects × nodes.
//
// A node has a snapshot while it has pods or open streams; the cluster view
// (mcpclient.ClusterNodeID) always has one. Nothing is served before the first full update, so
// that no client mistakes an empty start-up view for the cluster.
type Manager struct {
	cfg   Config
	cache cache.SnapshotCache

	mu      sync.Mutex
	loaded  bool
	objects [inventory.NumKinds]map[string]item // every object, by kind and name
	shared  [inventory.NumKinds]*typeSet        // the sets every view shares (not Pod, KeySecret)
	allPods *typeSet                            // the cluster view's pods
	// epoch and podGeneration make the cluster pod set's version: unique per process (so a
	// client that reconnects after a restart is sent the state again) and new on every change.
	epoch         string
	podGeneration uint64
	// clusterDue is set while a delayed rebuild of the cluster view is scheduled.
	clusterDue       bool
	lastClusterBuild time.Time
	nodes            map[string]*node
	secrets          *secretIndex
	gateways         *gatewayIndex
	streams          map[string]int       // open streams by node ID
	current          map[string]*Snapshot // what the cache holds, by node ID
}

// node is one node's share: its pods, the KeySecrets that select them and the gateway
// certificates their service accounts may read.
type node struct {
	pods     map[string]item
	secrets  map[string]int // KeySecret name -> pods on this node it selects
	gateways map[string]int // gateway certificate name -> pods on this node allowed to read it
	// The sets built from the above; nil when stale.
	podSet, secretSet, gatewaySet *typeSet
}

// New returns a Manager with an empty cache.
func New(cfg Config) (*Manager, error) {
	if cfg.Logger == nil || cfg.Metrics == nil {
		return nil, errors.New("snapshot manager needs a logger and metrics")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	m := &Manager{
		cfg: cfg,
		// ads=true: the cache answers a request that names resources only once the view holds
		// all of them, which keeps per-type responses consistent on aggregated streams.
		cache:    cache.NewSnapshotCache(true, cache.IDHash{}, xdslog.New(cfg.Logger)),
		nodes:    map[string]*node{},
		secrets:  newSecretIndex(),
		gateways: newGatewayIndex(),
		streams:  map[string]int{},
		current:  map[string]*Snapshot{},
		allPods:  emptySet,
		epoch:    newEpoch(),
	}
	for k := range m.objects {
		m.objects[k] = map[string]item{}
		m.shared[k] = emptySet
	}
	return m, nil
}

// Cache is what the xDS server serves from.
func (m *Manager) Cache() cache.Cache { return m.cache }

// Loaded reports whether the first state has arrived.
func (m *Manager) Loaded() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.loaded
}

// Update replaces the whole state (a full update).
func (m *Manager) Update(st inventory.State) error { return m.Apply(st.Update()) }

// change is a Change with its item made (hashing is the costly part, done outside the lock).
type change struct {
	kind inventory.Kind
	name string
	item *item // nil: removed
}

// Apply applies a source update. Only the views whose content changed are replaced in the cache,
// so a change on one node pushes nothing to the others. An error (an object that cannot be
// marshalled) rejects the whole update and leaves the views as they were.
func (m *Manager) Apply(u inventory.Update) error {
	changes := make([]change, 0, len(u.Changes))
	for _, c := range u.Changes {
		ch := change{kind: c.Kind, name: c.Name}
		if c.Object != nil {
			it, err := newItem(c.Name, c.Object)
			if err != nil {
				return err
			}
			ch.item = &it
		}
		changes = append(changes, ch)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	d := dirty{nodes: map[string]bool{}}
	if u.Full {
		var present [inventory.NumKinds]map[string]bool
		for k := range present {
			present[k] = map[string]bool{}
		}
		for _, c := range changes {
			present[c.kind][c.name] = true
		}
		for k := range m.objects {
			if inventory.Kind(k) == inventory.GatewayCertificate {
				continue // no source reports them: the gateway certificate controller applies them apart
			}
			for name := range m.objects[k] {
				if !present[k][name] {
					m.applyLocked(&d, change{kind: inventory.Kind(k), name: name})
				}
			}
		}
	}
	for _, c := range changes {
		m.applyLocked(&d, c)
	}
	for k := range m.objects {
		m.cfg.Metrics.Objects.WithLabelValues(metrics.KindLabelValue(k)).Set(float64(len(m.objects[k])))
	}
	first := !m.loaded
	m.loaded = true
	m.publishLocked(&d, first)
	return nil
}

// dirty records what an update touched.
type dirty struct {
	kinds [inventory.NumKinds]bool
	nodes map[string]bool
}

func (m *Manager) applyLocked(d *dirty, c change) {
	old, had := m.objects[c.kind][c.name]
	if !had && c.item == nil {
		return
	}
	if had && c.item != nil && old.version == c.item.version {
		return // same content: a resync or a duplicate event
	}
	d.kinds[c.kind] = true
	var oldObj, newObj inventory.Object
	if had {
		oldObj = old.resource.(inventory.Object)
	}
	if c.item != nil {
		newObj = c.item.resource.(inventory.Object)
		m.objects[c.kind][c.name] = *c.item
	} else {
		delete(m.objects[c.kind], c.name)
	}
	switch c.kind {
	case inventory.Pod:
		if had {
			m.removePodLocked(d, old)
		}
		if c.item != nil {
			m.addPodLocked(d, *c.item)
		}
	case inventory.KeySecret:
		// Every node that held or now holds the secret gets a new secret set: either its
		// membership or the secret's data changed.
		oldKS, _ := oldObj.(*mcpv1.KeySecret)
		newKS, _ := newObj.(*mcpv1.KeySecret)
		m.secrets.setSecret(oldKS, newKS, func(pod *mcpv1.Pod, delta int) { m.countSecretLocked(d, pod, c.name, delta) })
		if newKS != nil {
			// Data may have changed without membership changing.
			for nodeName, n := range m.nodes {
				if n.secrets[c.name] > 0 {
					n.secretSet = nil
					d.nodes[nodeName] = true
				}
			}
		}
	case inventory.GatewayCertificate:
		oldGC, _ := oldObj.(*mcpv1.GatewayCertificate)
		newGC, _ := newObj.(*mcpv1.GatewayCertificate)
		m.gateways.setCert(oldGC, newGC, func(pod *mcpv1.Pod, delta int) { m.countGatewayLocked(d, pod, c.name, delta) })
		if newGC != nil {
			// A rotated certificate changes content without changing membership.
			for nodeName, n := range m.nodes {
				if n.gateways[c.name] > 0 {
					n.gatewaySet = nil
					d.nodes[nodeName] = true
				}
			}
		}
	}
}

func (m *Manager) node(name string) *node {
	n := m.nodes[name]
	if n == nil {
		n = &node{pods: map[string]item{}, secrets: map[string]int{}, gateways: map[string]int{}}
		m.nodes[name] = n
	}
	return n
}

func (m *Manager) addPodLocked(d *dirty, it item) {
	pod := it.resource.(*mcpv1.Pod)
	m.secrets.addPod(pod)
	m.gateways.addPod(pod)
	// An unscheduled pod belongs to no node yet; only the cluster view has it.
	if pod.GetNodeName() == "" {
		return
	}
	n := m.node(pod.GetNodeName())
	n.pods[it.name] = it
	n.podSet = nil
	d.nodes[pod.GetNodeName()] = true
	for _, ks := range m.secrets.matching(pod) {
		m.countSecretLocked(d, pod, ks, +1)
	}
	for _, gc := range m.gateways.matching(pod) {
		m.countGatewayLocked(d, pod, gc, +1)
	}
}

func (m *Manager) removePodLocked(d *dirty, it item) {
	pod := it.resource.(*mcpv1.Pod)
	m.secrets.removePod(pod)
	m.gateways.removePod(pod)
	n := m.nodes[pod.GetNodeName()]
	if pod.GetNodeName() == "" || n == nil {
		return
	}
	delete(n.pods, it.name)
	n.podSet = nil
	d.nodes[pod.GetNodeName()] = true
	for _, ks := range m.secrets.matching(pod) {
		m.countSecretLocked(d, pod, ks, -1)
	}
	for _, gc := range m.gateways.matching(pod) {
		m.countGatewayLocked(d, pod, gc, -1)
	}
}

// countSecretLocked records that KeySecret ks selects (delta +1) or no longer selects (-1) pod.
func (m *Manager) countSecretLocked(d *dirty, pod *mcpv1.Pod, ks string, delta int) {
	if pod.GetNodeName() == "" {
		return
	}
	n := m.nodes[pod.GetNodeName()]
	if n == nil {
		if delta < 0 {
			return // nothing counted there
		}
		n = m.node(pod.GetNodeName())
	}
	before := n.secrets[ks]
	if n.secrets[ks] += delta; n.secrets[ks] <= 0 {
		delete(n.secrets, ks)
	}
	if (before > 0) != (n.secrets[ks] > 0) {
		n.secretSet = nil
		d.nodes[pod.GetNodeName()] = true
	}
}

// publishLocked rebuilds the stale sets and puts every changed view in the cache: touched nodes
// first (the latency that matters), then the cluster view.
func (m *Manager) publishLocked(d *dirty, all bool) {
	sharedChanged := all
	for k := range m.shared {
		if d.kinds[k] && !perNode(inventory.Kind(k)) {
			m.shared[k] = newTypeSet(m.objects[k])
			sharedChanged = true
		}
	}
	targets := d.nodes
	if sharedChanged {
		// Every view holds the shared sets: every node with a view gets a new one.
		targets = map[string]bool{}
		for n := range m.nodes {
			targets[n] = true
		}
		for n := range m.streams {
			targets[n] = true
		}
	}
	for name := range targets {
		if name == mcpclient.ClusterNodeID {
			continue
		}
		n := m.nodes[name]
		if n != nil && len(n.pods) == 0 && len(n.secrets) == 0 && len(n.gateways) == 0 {
			delete(m.nodes, name)
			n = nil
		}
		if n == nil && m.streams[name] == 0 {
			m.clearLocked(name)
			continue
		}
		m.setLocked(name)
	}
	// Throttled, leading and trailing: an isolated change reaches citadel at once (a new pod's
	// first certificate request must not beat it there), a burst at most once per ClusterDelay.
	now := m.cfg.Clock.Now()
	sinceBuild := now.Sub(m.lastClusterBuild)
	switch {
	case all || (d.kinds[inventory.Pod] && !m.clusterDue && sinceBuild >= m.cfg.ClusterDelay):
		m.rebuildClusterLocked(now)
	case d.kinds[inventory.Pod]:
		if !m.clusterDue {
			m.clusterDue = true
			wait := m.cfg.ClusterDelay - sinceBuild
			due := now.Add(wait)
			// The callback must not read the clock: a fake clock runs it holding its own lock.
			m.cfg.Clock.AfterFunc(wait, func() {
				m.mu.Lock()
				defer m.mu.Unlock()
				m.rebuildClusterLocked(due)
			})
		}
		if sharedChanged {
			m.setLocked(mcpclient.ClusterNodeID)
		}
	case sharedChanged:
		m.setLocked(mcpclient.ClusterNodeID)
	}
}

// rebuildClusterLocked copies every pod into a new cluster set and publishes the cluster view.
func (m *Manager) rebuildClusterLocked(now time.Time) {
	m.clusterDue = false
	m.lastClusterBuild = now
	m.podGeneration++
	m.allPods = newVersionedSet(m.objects[inventory.Pod], fmt.Sprintf("%s-%d", m.epoch, m.podGeneration))
	m.setLocked(mcpclient.ClusterNodeID)
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
	if _, hasPods := m.nodes[node]; hasPods || node == mcpclient.ClusterNodeID {
		return
	}
	m.clearLocked(node)
}

func (m *Manager) clearLocked(node string) {
	if _, ok := m.current[node]; ok {
		m.cache.ClearSnapshot(node)
		delete(m.current, node)
	}
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

func (m *Manager) viewLocked(name string) *Snapshot {
	s := &Snapshot{sets: m.shared}
	if name == mcpclient.ClusterNodeID {
		s.sets[inventory.Pod] = m.allPods
		s.sets[inventory.KeySecret] = emptySet // secret data never goes to the cluster view
		s.sets[inventory.GatewayCertificate] = emptySet
		return s
	}
	s.sets[inventory.Pod], s.sets[inventory.KeySecret], s.sets[inventory.GatewayCertificate] = emptySet, emptySet, emptySet
	n := m.nodes[name]
	if n == nil {
		return s
	}
	if n.podSet == nil {
		n.podSet = newTypeSet(n.pods)
	}
	if n.secretSet == nil {
		items := make(map[string]item, len(n.secrets))
		for ks := range n.secrets {
			items[ks] = m.objects[inventory.KeySecret][ks]
		}
		n.secretSet = newTypeSet(items)
	}
	if n.gatewaySet == nil {
		items := make(map[string]item, len(n.gateways))
		for gc := range n.gateways {
			items[gc] = m.objects[inventory.GatewayCertificate][gc]
		}
		n.gatewaySet = newTypeSet(items)
	}
	s.sets[inventory.Pod], s.sets[inventory.KeySecret], s.sets[inventory.GatewayCertificate] = n.podSet, n.secretSet, n.gatewaySet
	return s
}

// newEpoch is a random identifier of this process's cluster pod versions.
func newEpoch() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather than return an error since Go 1.24)
	return hex.EncodeToString(b)
}

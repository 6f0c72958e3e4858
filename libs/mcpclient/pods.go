package mcpclient

import (
	"fmt"
	"sync"

	"google.golang.org/protobuf/types/known/anypb"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// MCP type URLs of the resources mcp-sync serves.
const (
	PodTypeURL            = "type.googleapis.com/portcullis.mcp.v1.Pod"
	ServiceAccountTypeURL = "type.googleapis.com/portcullis.mcp.v1.ServiceAccount"
	NamespaceTypeURL      = "type.googleapis.com/portcullis.mcp.v1.Namespace"
)

// ClusterNodeID is the node ID citadel subscribes with: it receives every node's pods. mcp-sync
// grants it only to the citadel identity; a node agent must use its own node name.
const ClusterNodeID = "*"

// Pods is the local view of the pods mcp-sync sent. It is safe for concurrent use.
type Pods struct {
	mu       sync.RWMutex
	byKey    map[string]*mcpv1.Pod
	synced   chan struct{}
	syncOnce sync.Once
	onChange []func()
}

// NewPods returns an empty, not yet synced view.
func NewPods() *Pods {
	return &Pods{byKey: map[string]*mcpv1.Pod{}, synced: make(chan struct{})}
}

// Apply replaces the view with a full state of Pod resources.
func (p *Pods) Apply(resources []*anypb.Any) error {
	next := make(map[string]*mcpv1.Pod, len(resources))
	for _, r := range resources {
		if r.GetTypeUrl() != PodTypeURL {
			return fmt.Errorf("%w: %s", errWrongType, r.GetTypeUrl())
		}
		pod := &mcpv1.Pod{}
		if err := r.UnmarshalTo(pod); err != nil {
			return fmt.Errorf("decoding pod: %w", err)
		}
		next[pod.GetName()] = pod
	}
	p.mu.Lock()
	p.byKey = next
	hooks := p.onChange
	p.mu.Unlock()
	p.syncOnce.Do(func() { close(p.synced) })
	for _, h := range hooks {
		h()
	}
	return nil
}

// Get returns the pod with key "<namespace>/<name>".
func (p *Pods) Get(key string) (*mcpv1.Pod, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	pod, ok := p.byKey[key]
	return pod, ok
}

// Find returns a pod for which match is true. It scans every pod, so it is for rare paths
// (certificate renewals), not per-request lookups.
func (p *Pods) Find(match func(*mcpv1.Pod) bool) (*mcpv1.Pod, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, pod := range p.byKey {
		if match(pod) {
			return pod, true
		}
	}
	return nil, false
}

// Len is the number of pods in the view.
func (p *Pods) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.byKey)
}

// Synced is closed once the first full state has arrived.
func (p *Pods) Synced() <-chan struct{} { return p.synced }

// OnChange registers f to run after every applied update. Register before the watch starts.
func (p *Pods) OnChange(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onChange = append(p.onChange, f)
}

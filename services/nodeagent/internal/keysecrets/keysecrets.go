// Package keysecrets decides which KeySecrets a caller of the node agent may read: those in its
// own namespace whose selector matches its pod's labels, as mcp-sync reports them now. It holds
// the node's KeySecret view in memory only (never on disk) and tells subscribers when the answer
// may have changed: a KeySecret added, edited or deleted, or a pod relabelled.
package keysecrets

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// DefaultMaxBytes bounds the data of one KeySecret (the sum of its keys and values). 64 KiB holds
// any key or token a sidecar uses with room to spare; far larger blobs belong in a volume, and
// each byte is held in memory and sent on every stream that watches it.
const DefaultMaxBytes = 64 << 10

// PodIPLabel is the pseudo-label a selector uses to match a pod's IP (as in mcp-sync).
const PodIPLabel = "security.portcullis.dev/pod-ip"

// Errors of Lookup; the SDS edge maps them to gRPC codes.
var (
	ErrNotFound  = errors.New("no such KeySecret on this node")
	ErrForbidden = errors.New("KeySecret does not select the caller's pod")
	ErrTooLarge  = errors.New("KeySecret is over the agent's size limit")
)

// KeySecretView is the node's KeySecret view (*mcpclient.KeySecrets).
type KeySecretView interface {
	Get(key string) (*mcpv1.KeySecret, bool)
	OnChange(f func())
	// Synced is closed once the first view has arrived.
	Synced() <-chan struct{}
}

// PodView is the node's pod view (*mcpclient.Pods).
type PodView interface {
	Get(key string) (*mcpv1.Pod, bool)
	OnChange(f func())
}

// Config configures a Store.
type Config struct {
	KeySecrets KeySecretView
	Pods       PodView
	// MaxBytes is the largest KeySecret served; 0 means DefaultMaxBytes.
	MaxBytes int
	// SyncWait bounds how long Lookup waits for the first KeySecret view (a sidecar that asks
	// while the agent starts); 0 means 10s.
	SyncWait time.Duration
}

// Store answers which KeySecret a caller may read. Safe for concurrent use.
type Store struct {
	cfg  Config
	mu   sync.Mutex
	subs map[*subscription]struct{}
}

type subscription struct {
	pending chan struct{}
	f       func()
}

// New returns a Store and registers it for changes of both views: build it before the views'
// watches start.
func New(cfg Config) *Store {
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.SyncWait == 0 {
		cfg.SyncWait = 10 * time.Second
	}
	s := &Store{cfg: cfg, subs: map[*subscription]struct{}{}}
	cfg.KeySecrets.OnChange(s.notify)
	cfg.Pods.OnChange(s.notify)
	return s
}

// Lookup returns the KeySecret "<namespace>/<name>" if caller's pod may read it. The pod's labels
// are read from the pod view at the time of the call, so a relabelled pod loses access at once.
// The errors name the KeySecret and the pod, never the data.
func (s *Store) Lookup(ctx context.Context, caller identity.Caller, key string) (*mcpv1.KeySecret, error) {
	select {
	case <-s.cfg.KeySecrets.Synced():
	default:
		t := time.NewTimer(s.cfg.SyncWait)
		defer t.Stop()
		select {
		case <-s.cfg.KeySecrets.Synced():
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, fmt.Errorf("%w: %q: no KeySecret view from mcp-sync yet", ErrNotFound, key)
		}
	}
	ks, ok := s.cfg.KeySecrets.Get(key)
	if !ok {
		// A KeySecret that selects no pod on this node is not in the view either: from here it is
		// indistinguishable from one that does not exist, and saying "not found" leaks nothing.
		return nil, fmt.Errorf("%w: %q (mcp-sync sends a node only the KeySecrets that select a pod on it)", ErrNotFound, key)
	}
	podKey := caller.Workload.PodKey()
	if ks.GetNamespace() != caller.Workload.Namespace {
		return nil, fmt.Errorf("%w: %q is in namespace %q, the caller's pod %s is not", ErrForbidden, key, ks.GetNamespace(), podKey)
	}
	pod, ok := s.cfg.Pods.Get(podKey)
	if !ok || (caller.Workload.PodUID != "" && pod.GetUid() != caller.Workload.PodUID) {
		return nil, fmt.Errorf("%w: %q: the caller's pod %s is not in this node's pod view", ErrForbidden, key, podKey)
	}
	if !Matches(ks.GetSelector(), pod) {
		return nil, fmt.Errorf("%w: %q: its selector does not match the labels of pod %s", ErrForbidden, key, podKey)
	}
	if n := Size(ks); n > s.cfg.MaxBytes {
		return nil, fmt.Errorf("%w: %q holds %d bytes, the limit is %d (-keysecret-max-bytes)", ErrTooLarge, key, n, s.cfg.MaxBytes)
	}
	return ks, nil
}

// Size is the size of a KeySecret's data: its keys and values.
func Size(ks *mcpv1.KeySecret) int {
	n := 0
	for k, v := range ks.GetData() {
		n += len(k) + len(v)
	}
	return n
}

// SubscribeFunc calls f, in a goroutine of its own, after any change that may change what Lookup
// answers; changes that arrive while a call is pending are folded into it. cancel unsubscribes.
func (s *Store) SubscribeFunc(f func()) (cancel func()) {
	sub := &subscription{pending: make(chan struct{}, 1), f: f}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	}
}

func (s *Store) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		select {
		case sub.pending <- struct{}{}:
			go func() {
				<-sub.pending // taken before the call: a change during it calls again
				sub.f()
			}()
		default:
		}
	}
}

// Matches reports whether sel matches pod the way Kubernetes evaluates a LabelSelector (with the
// pod-IP pseudo-label, as mcp-sync does). A nil selector, or an unknown operator, matches nothing.
func Matches(sel *mcpv1.LabelSelector, pod *mcpv1.Pod) bool {
	if sel == nil {
		return false
	}
	labels := pod.GetLabels()
	get := func(k string) (string, bool) {
		if k == PodIPLabel && pod.GetPodIp() != "" {
			return pod.GetPodIp(), true
		}
		v, ok := labels[k]
		return v, ok
	}
	for k, want := range sel.GetMatchLabels() {
		if v, ok := get(k); !ok || v != want {
			return false
		}
	}
	for _, r := range sel.GetMatchExpressions() {
		v, ok := get(r.GetKey())
		switch r.GetOperator() {
		case "In":
			if !ok || !slices.Contains(r.GetValues(), v) {
				return false
			}
		case "NotIn":
			if ok && slices.Contains(r.GetValues(), v) {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

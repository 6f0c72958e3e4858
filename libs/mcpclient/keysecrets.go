package mcpclient

import (
	"fmt"
	"sync"

	"google.golang.org/protobuf/types/known/anypb"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// KeySecrets is the local view of the KeySecrets mcp-sync sent to this node: those that select a
// pod on it. The view holds sensitive material in memory only; it never writes or logs it. It is
// safe for concurrent use.
type KeySecrets struct {
	mu       sync.RWMutex
	byKey    map[string]*mcpv1.KeySecret
	synced   chan struct{}
	syncOnce sync.Once
	onChange []func()
}

// NewKeySecrets returns an empty, not yet synced view.
func NewKeySecrets() *KeySecrets {
	return &KeySecrets{byKey: map[string]*mcpv1.KeySecret{}, synced: make(chan struct{})}
}

// Apply replaces the view with a full state of KeySecret resources.
func (k *KeySecrets) Apply(resources []*anypb.Any) error {
	next := make(map[string]*mcpv1.KeySecret, len(resources))
	for _, r := range resources {
		if r.GetTypeUrl() != KeySecretTypeURL {
			return fmt.Errorf("%w: %s", errWrongType, r.GetTypeUrl())
		}
		ks := &mcpv1.KeySecret{}
		if err := r.UnmarshalTo(ks); err != nil {
			// The error names the type only: a decoding error could quote the material.
			return fmt.Errorf("decoding a KeySecret resource failed")
		}
		next[ks.GetName()] = ks
	}
	k.mu.Lock()
	k.byKey = next
	hooks := k.onChange
	k.mu.Unlock()
	k.syncOnce.Do(func() { close(k.synced) })
	for _, h := range hooks {
		h()
	}
	return nil
}

// Get returns the KeySecret with key "<namespace>/<name>". The caller must not modify it.
func (k *KeySecrets) Get(key string) (*mcpv1.KeySecret, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	ks, ok := k.byKey[key]
	return ks, ok
}

// Len is the number of KeySecrets in the view.
func (k *KeySecrets) Len() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.byKey)
}

// Synced is closed once the first full state has arrived.
func (k *KeySecrets) Synced() <-chan struct{} { return k.synced }

// OnChange registers f to run after every applied update. Register before the watch starts.
func (k *KeySecrets) OnChange(f func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.onChange = append(k.onChange, f)
}

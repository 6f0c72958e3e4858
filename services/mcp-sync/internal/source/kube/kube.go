// Package kube is the source that watches the Kubernetes API with client-go shared informers:
// one cluster-wide watch per kind (Pods, ServiceAccounts, Namespaces and the Portcullis custom
// resources). The per-node split happens downstream, in the snapshot manager, so the API server
// serves one watcher however many agents there are.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// Config configures a kube source.
type Config struct {
	Dynamic dynamic.Interface
	Logger  *slog.Logger
	// Errors counts watch failures and malformed objects; may be nil.
	Errors prometheus.Counter
	// Malformed is set to 1 per malformed object with the labels kind, namespace and name, and
	// the series deleted when the object is fixed or deleted; may be nil.
	Malformed *prometheus.GaugeVec
	// LastGoodLoad is set when the initial list completes; may be nil.
	LastGoodLoad prometheus.Gauge
	// Now is the time source for LastGoodLoad; nil means time.Now.
	Now func() time.Time
}

// Source is the Kubernetes source. Create it with New.
type Source struct {
	cfg Config

	mu      sync.Mutex
	pending map[pendingKey]inventory.Change // latest change per object, not yet delivered
	order   []pendingKey                    // delivery order of pending
	wake    chan struct{}                   // has a value when pending is not empty
}

type pendingKey struct {
	kind inventory.Kind
	name string
}

// New checks cfg and returns a source that has not contacted the API server yet.
func New(cfg Config) (*Source, error) {
	if cfg.Dynamic == nil {
		return nil, errors.New("kubernetes client is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("logger is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Logger = cfg.Logger.With("source", "kube")
	return &Source{cfg: cfg, pending: map[pendingKey]inventory.Change{}, wake: make(chan struct{}, 1)}, nil
}

// Run implements source.Source. It fails at once when RBAC forbids listing a kind or a CRD is
// not installed; an unreachable API server is waited for, and once running, the informers ride
// out API server outages (the last state stays served) and relist on reconnect.
func (s *Source) Run(ctx context.Context, sink func(inventory.Update)) error {
	if err := s.preflight(ctx); err != nil {
		return err
	}
	factory := dynamicinformer.NewDynamicSharedInformerFactory(s.cfg.Dynamic, 0)
	var synced []cache.InformerSynced
	for _, k := range kinds {
		inf := factory.ForResource(k.resource).Informer()
		if err := inf.SetTransform(stripUnused); err != nil {
			return fmt.Errorf("informer for %s: %w", k.resource.Resource, err)
		}
		if err := inf.SetWatchErrorHandler(s.watchErrorHandler(k.resource)); err != nil {
			return fmt.Errorf("informer for %s: %w", k.resource.Resource, err)
		}
		reg, err := inf.AddEventHandler(s.handler(k))
		if err != nil {
			return fmt.Errorf("informer for %s: %w", k.resource.Resource, err)
		}
		synced = append(synced, reg.HasSynced)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown() // waits for the informers' goroutines
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended
	}
	initial := s.drain()
	full := inventory.Update{Full: true}
	for _, c := range initial {
		if c.Object != nil {
			full.Changes = append(full.Changes, c)
		}
	}
	if s.cfg.LastGoodLoad != nil {
		s.cfg.LastGoodLoad.Set(float64(s.cfg.Now().UnixNano()) / 1e9)
	}
	s.cfg.Logger.Info("kubernetes objects listed", "objects", len(full.Changes))
	sink(full)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
			if changes := s.drain(); len(changes) > 0 {
				sink(inventory.Update{Changes: changes})
			}
		}
	}
}

// enqueue records the latest change of an object. Changes to one object coalesce: only the
// latest state matters, so a burst of edits delivers once.
func (s *Source) enqueue(c inventory.Change) {
	k := pendingKey{c.Kind, c.Name}
	s.mu.Lock()
	if _, ok := s.pending[k]; !ok {
		s.order = append(s.order, k)
	}
	s.pending[k] = c
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Source) drain() []inventory.Change {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]inventory.Change, 0, len(s.order))
	for _, k := range s.order {
		out = append(out, s.pending[k])
	}
	s.pending, s.order = make(map[pendingKey]inventory.Change, len(s.pending)), nil
	return out
}

func (s *Source) watchErrorHandler(r schema.GroupVersionResource) cache.WatchErrorHandler {
	return func(_ *cache.Reflector, err error) {
		if s.cfg.Errors != nil {
			s.cfg.Errors.Inc()
		}
		if msg, ok := rbacMessage(r, err); ok {
			s.cfg.Logger.Error(msg, "err", err)
			return
		}
		s.cfg.Logger.Warn("watch failed, serving the last state and retrying", "resource", describe(r), "err", err)
	}
}

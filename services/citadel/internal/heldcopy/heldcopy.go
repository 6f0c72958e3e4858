// Package heldcopy keeps citadel's last good copy of a versioned document that kms-adapter owns
// (the trust bundle, the JWT bundle), so that node agents are still answered while kms-adapter is
// down. The copy is fetched at start, every Refresh, and at once when an event says it changed;
// concurrent fetches share one call, an answer older than the held copy never replaces it, and a
// failed fetch keeps the last good copy.
package heldcopy

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"
)

// Config carries a source's dependencies.
type Config[T any] struct {
	// What names the document in logs and errors ("trust bundle").
	What string
	// Fetch fetches and checks the document; it is called with a context bounded by Timeout and
	// detached from the caller's, since concurrent callers share the call.
	Fetch func(ctx context.Context) (T, error)
	// Version is the document's version; a newer copy has a larger one.
	Version func(T) uint64
	// Unavailable is wrapped by Get's error when nothing is held and a fetch fails.
	Unavailable error
	Refresh     time.Duration // interval between refreshes
	Timeout     time.Duration // bound on one fetch; 0 means 10s
	Clock       clock.WithTicker
	Logger      *slog.Logger
	// OnUpdate, if set, is called with every newly held copy.
	OnUpdate func(T)
}

// Source holds the last good copy. It is safe for concurrent use.
type Source[T any] struct {
	cfg    Config[T]
	flight singleflight.Group

	mu      sync.RWMutex
	current T
	held    bool
}

// New returns a source that holds nothing yet; Run or Get fetches.
func New[T any](cfg Config[T]) *Source[T] {
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Source[T]{cfg: cfg}
}

// Run fetches at once, then every Refresh, until ctx ends. A failed refresh is logged and the last
// good copy stays in force; it never stops Run.
func (s *Source[T]) Run(ctx context.Context) error {
	ticker := s.cfg.Clock.NewTicker(s.cfg.Refresh)
	defer ticker.Stop()
	for {
		if _, err := s.Refresh(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("refreshing the "+s.cfg.What+" failed; keeping the last good one", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
	}
}

// Get returns the held copy, fetching one first if none is held yet.
func (s *Source[T]) Get(ctx context.Context) (T, error) {
	if c, ok := s.Current(); ok {
		return c, nil
	}
	c, err := s.Refresh(ctx)
	if err != nil {
		return c, fmt.Errorf("%w: %w", s.cfg.Unavailable, err)
	}
	return c, nil
}

// Current is the held copy, and whether there is one.
func (s *Source[T]) Current() (T, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.current, s.held
}

// Refresh fetches now (an event says the document changed) and returns what is then held. A
// failure keeps the last good copy and is returned.
func (s *Source[T]) Refresh(ctx context.Context) (T, error) {
	ch := s.flight.DoChan("fetch", func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
		defer cancel()
		c, err := s.cfg.Fetch(fctx)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		if s.held && s.cfg.Version(c) < s.cfg.Version(s.current) {
			// An answer older than what is held (a fetch that raced a rotation): keep the newer.
			c = s.current
		}
		s.current, s.held = c, true
		s.mu.Unlock()
		if s.cfg.OnUpdate != nil {
			s.cfg.OnUpdate(c)
		}
		return c, nil
	})
	var zero T
	select {
	case <-ctx.Done():
		return zero, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return zero, r.Err
		}
		return r.Val.(T), nil
	}
}

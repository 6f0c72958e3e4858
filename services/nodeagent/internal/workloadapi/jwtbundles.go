package workloadapi

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JWTBundleSource fetches the trust domain's JWT-SVID keys (citadelclient.Client): the trust
// domain, an RFC 7517 JWK Set and its version.
type JWTBundleSource interface {
	JWTBundle(ctx context.Context) (trustDomain string, jwks []byte, version uint64, err error)
}

// JWTBundles is the agent's copy of the JWT bundle: fetched at start, again on a
// JWTBundleChanged event (Refresh) and every poll interval (Run). It is a jwtbundle.Source for
// go-spiffe's validation. It is safe for concurrent use.
type JWTBundles struct {
	src    JWTBundleSource
	td     spiffeid.TrustDomain
	every  time.Duration
	logger *slog.Logger

	mu      sync.Mutex
	bundle  *jwtbundle.Bundle // nil until the first fetch
	jwks    []byte
	version uint64
	changed chan struct{} // closed and replaced on every change
}

// NewJWTBundles returns an empty bundle for td, refreshed from src every poll interval once Run.
func NewJWTBundles(src JWTBundleSource, td spiffeid.TrustDomain, every time.Duration, logger *slog.Logger) *JWTBundles {
	return &JWTBundles{src: src, td: td, every: every, logger: logger, changed: make(chan struct{})}
}

// Run fetches the bundle at once and then every poll interval, retrying failures sooner (with
// backoff, never later than the interval), until ctx ends.
func (b *JWTBundles) Run(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for {
		wait := b.every
		if err := b.Refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			b.logger.Warn("fetching the jwt bundle from citadel failed; retrying", "err", err, "in", backoff)
			wait = min(backoff+rand.N(backoff/2+1), b.every)
			backoff = min(2*backoff, b.every)
		} else {
			backoff = 200 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Refresh fetches the bundle now and, if it changed, wakes every watcher. A bundle that does
// not parse, or is for another trust domain, is refused and the current one stays.
func (b *JWTBundles) Refresh(ctx context.Context) error {
	tdName, jwks, version, err := b.src.JWTBundle(ctx)
	if err != nil {
		return err
	}
	if tdName != b.td.Name() && tdName != b.td.IDString() {
		return fmt.Errorf("citadel sent the jwt bundle of trust domain %q, want %q", tdName, b.td.Name())
	}
	parsed, err := jwtbundle.Parse(b.td, jwks)
	if err != nil {
		return fmt.Errorf("citadel sent a bad jwt bundle: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bundle != nil && version < b.version {
		return nil // a reply from a replica that has not caught up: keep the newer
	}
	if b.bundle != nil && bytes.Equal(jwks, b.jwks) {
		b.version = version
		return nil
	}
	b.bundle, b.jwks, b.version = parsed, jwks, version
	close(b.changed)
	b.changed = make(chan struct{})
	b.logger.Info("jwt bundle updated", "version", version, "keys", len(parsed.JWTAuthorities()))
	return nil
}

// RefreshTo refetches until the bundle is at least version want, at most attempts times,
// retryDelay apart: an event may arrive before every citadel replica has seen the change.
func (b *JWTBundles) RefreshTo(ctx context.Context, want uint64, attempts int, retryDelay time.Duration) error {
	var err error
	for i := range attempts {
		if i > 0 {
			t := time.NewTimer(retryDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				return context.Cause(ctx)
			case <-t.C:
			}
		}
		if err = b.Refresh(ctx); err == nil {
			_, _, v, _ := b.Current()
			if v >= want {
				return nil
			}
			err = fmt.Errorf("citadel serves jwt bundle version %d, want %d", v, want)
		}
	}
	return err
}

// Current returns the JWK Set (nil before the first fetch), its version, and a channel closed at
// the next change.
func (b *JWTBundles) Current() (jwks []byte, changed <-chan struct{}, version uint64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.jwks, b.changed, b.version, b.bundle != nil
}

// GetJWTBundleForTrustDomain implements jwtbundle.Source: only the agent's own trust domain is
// known (no federation).
func (b *JWTBundles) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	b.mu.Lock()
	bundle := b.bundle
	b.mu.Unlock()
	switch {
	case td != b.td:
		return nil, fmt.Errorf("no jwt bundle for trust domain %q (this agent knows %q only)", td.Name(), b.td.Name())
	case bundle == nil:
		return nil, fmt.Errorf("the jwt bundle of %q has not been fetched from citadel yet", td.Name())
	}
	return bundle, nil
}

// Package revocations is citadel's copy of kms-adapter's revocation state, the authority on which
// certificates may no longer prove a renewal. Citadel loads it before it grants any renewal proof,
// refetches it whenever a revocation event arrives (the event is only a hint: nothing in its
// payload is used), polls it, and refetches it before refusing a certificate that was signed after
// the copy it holds was fetched.
package revocations

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// ErrUnavailable means the state could not be fetched from kms-adapter when it was needed.
var ErrUnavailable = errors.New("revocation state unavailable")

// KMS is the part of kms-adapter's API the source uses; kmsv1.KeyManagementServiceClient
// satisfies it.
type KMS interface {
	GetRevocations(ctx context.Context, in *kmsv1.GetRevocationsRequest, opts ...grpc.CallOption) (*kmsv1.GetRevocationsResponse, error)
}

// Config carries the source's dependencies.
type Config struct {
	KMS     KMS
	Refresh time.Duration // interval between polls once loaded
	Timeout time.Duration // bound on one fetch; 0 means 10s
	Clock   clock.WithTicker
	Logger  *slog.Logger
	// OnRevoked, if set, is called for each identity whose revocation is new in a fetched state
	// (its cached certificates must not be handed out again).
	OnRevoked func(id spiffeid.ID)
	// RecheckWindow: a certificate not listed as reissued is refused on the held copy alone if the
	// copy was fetched more than this after the certificate's NotBefore (signers backdate by a
	// minute or less, so it was recorded by then); otherwise the state is fetched again first.
	// 0 means 10m.
	RecheckWindow time.Duration
}

// recheckInterval bounds how often a refusal may refetch the state: a holder of a revoked key
// retrying in a loop costs kms-adapter at most one small call per second.
const recheckInterval = time.Second

// Source holds the last fetched state. It is safe for concurrent use.
type Source struct {
	cfg      Config
	loaded   chan struct{}
	loadOnce sync.Once
	flight   singleflight.Group

	mu      sync.RWMutex
	current *state // nil until loaded
}

type state struct {
	version   uint64
	fetchedAt time.Time // when the fetch began, on citadel's clock
	entries   map[spiffeid.ID]entry
}

type entry struct {
	revokedAt time.Time
	cutoff    time.Time
	reissued  map[string]bool // big-endian serials
}

// New returns a source that holds nothing yet.
func New(cfg Config) *Source {
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.RecheckWindow == 0 {
		cfg.RecheckWindow = 10 * time.Minute
	}
	return &Source{cfg: cfg, loaded: make(chan struct{})}
}

// Loaded is closed once a state has been fetched.
func (s *Source) Loaded() <-chan struct{} { return s.loaded }

// Run fetches at once, retrying with backoff until a state is held, then every Refresh, until
// ctx ends. A failed fetch is logged and the held state stays in force.
func (s *Source) Run(ctx context.Context) error {
	delay := 200 * time.Millisecond
	for {
		err := s.Refresh(ctx)
		if err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("fetching the revocation state from kms-adapter failed", "err", err)
		}
		wait := s.cfg.Refresh
		if !s.isLoaded() {
			wait, delay = delay, min(2*delay, s.cfg.Refresh)
		}
		t := s.cfg.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

func (s *Source) isLoaded() bool {
	select {
	case <-s.loaded:
		return true
	default:
		return false
	}
}

// Refresh fetches the state now. Concurrent refreshes share one fetch; an answer older than the
// held state is dropped.
func (s *Source) Refresh(ctx context.Context) error {
	ch := s.flight.DoChan("revocations", func() (any, error) {
		// Detached from the first caller's ctx so that its cancellation does not fail the others.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
		defer cancel()
		started := s.cfg.Clock.Now()
		resp, err := s.cfg.KMS.GetRevocations(fctx, &kmsv1.GetRevocationsRequest{})
		if err != nil {
			return nil, fmt.Errorf("%w: fetching from kms-adapter: %w", ErrUnavailable, err)
		}
		next, err := parse(resp, started)
		if err != nil {
			return nil, err
		}
		s.apply(next)
		return nil, nil
	})
	select {
	case <-ctx.Done():
		return ctx.Err()
	case r := <-ch:
		return r.Err
	}
}

func (s *Source) apply(next *state) {
	var revoked []spiffeid.ID
	s.mu.Lock()
	cur := s.current
	if cur != nil && next.version < cur.version {
		// A fetch that raced a newer one: keep the newer state.
		s.mu.Unlock()
		return
	}
	for id, e := range next.entries {
		if old, ok := cur.entry(id); !ok || !old.revokedAt.Equal(e.revokedAt) {
			revoked = append(revoked, id)
		}
	}
	s.current = next
	s.mu.Unlock()
	s.loadOnce.Do(func() { close(s.loaded) })
	for _, id := range revoked {
		if s.cfg.OnRevoked != nil {
			s.cfg.OnRevoked(id)
		}
		s.cfg.Logger.Info("identity revoked: renewal proofs by its certificates issued before the revocation are refused",
			"spiffe_id", id.String(), "revocation_version", next.version)
	}
}

func (st *state) entry(id spiffeid.ID) (entry, bool) {
	if st == nil {
		return entry{}, false
	}
	e, ok := st.entries[id]
	return e, ok
}

// Revoked reports whether leaf, a certificate of id, is revoked. It refetches the state first when
// the held copy may predate the recording of leaf as a replacement; its error (wrapping
// ErrUnavailable) means it could not tell. The state must be loaded (see Loaded).
func (s *Source) Revoked(ctx context.Context, id spiffeid.ID, leaf *x509.Certificate) (bool, error) {
	s.mu.RLock()
	st := s.current
	s.mu.RUnlock()
	if st == nil {
		return false, fmt.Errorf("%w: not loaded from kms-adapter yet", ErrUnavailable)
	}
	if !st.revoked(id, leaf) {
		return false, nil
	}
	now := s.cfg.Clock.Now()
	if st.fetchedAt.After(leaf.NotBefore.Add(s.cfg.RecheckWindow)) || now.Sub(st.fetchedAt) < recheckInterval {
		return true, nil
	}
	if err := s.Refresh(ctx); err != nil {
		return false, err
	}
	s.mu.RLock()
	st = s.current
	s.mu.RUnlock()
	return st.revoked(id, leaf), nil
}

func (st *state) revoked(id spiffeid.ID, leaf *x509.Certificate) bool {
	e, ok := st.entries[id]
	if !ok || leaf.NotBefore.After(e.cutoff) {
		return false
	}
	return !e.reissued[string(leaf.SerialNumber.Bytes())]
}

func parse(resp *kmsv1.GetRevocationsResponse, fetchedAt time.Time) (*state, error) {
	st := &state{version: resp.GetVersion(), fetchedAt: fetchedAt, entries: map[spiffeid.ID]entry{}}
	for _, r := range resp.GetRevocations() {
		id, err := spiffeid.FromString(r.GetSpiffeId())
		if err != nil || r.GetRevokedAt() == nil || r.GetNotBeforeCutoff() == nil {
			// Refusing the whole state keeps the held one: better stale than missing an entry.
			return nil, fmt.Errorf("%w: kms-adapter sent a malformed revocation of %q", ErrUnavailable, r.GetSpiffeId())
		}
		e := entry{revokedAt: r.GetRevokedAt().AsTime(), cutoff: r.GetNotBeforeCutoff().AsTime(), reissued: map[string]bool{}}
		for _, serial := range r.GetReissuedSerials() {
			e.reissued[string(new(big.Int).SetBytes(serial).Bytes())] = true
		}
		st.entries[id] = e
	}
	return st, nil
}

// Package jwtbundle keeps the JWT bundle (the keys JWT-SVIDs are verified with) that citadel hands
// to node agents: fetched from kms-adapter at start, on every JWTBundleChanged event and every
// refresh interval, with the last good copy served while kms-adapter is down.
package jwtbundle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/heldcopy"
)

// ErrUnavailable means no JWT bundle is held and kms-adapter could not provide one.
var ErrUnavailable = errors.New("jwt bundle unavailable")

// MaxJWKSBytes bounds the JWK Set accepted from kms-adapter: a handful of keys is a few KiB
// (an RSA-2048 key is ~0.5 KiB), so 1 MiB only stops a runaway.
const MaxJWKSBytes = 1 << 20

// KMS is the part of kms-adapter's API the source uses; kmsv1.JWTServiceClient satisfies it.
type KMS interface {
	GetJWTBundle(ctx context.Context, in *kmsv1.GetJWTBundleRequest, opts ...grpc.CallOption) (*kmsv1.GetJWTBundleResponse, error)
}

// Bundle is one JWT bundle. It is immutable once returned.
type Bundle struct {
	TrustDomain string
	JWKS        []byte // RFC 7517 JWK Set, as kms-adapter serves it
	Version     uint64
	Keys        int
}

// Config carries the source's dependencies.
type Config struct {
	TrustDomain spiffeid.TrustDomain // a bundle of another trust domain is refused
	KMS         KMS
	Refresh     time.Duration
	Timeout     time.Duration // 0 means 10s
	Clock       clock.WithTicker
	Logger      *slog.Logger
	OnUpdate    func(*Bundle)
}

// Source holds the last good JWT bundle. It is safe for concurrent use.
type Source struct {
	held *heldcopy.Source[*Bundle]
}

// New returns a source that holds nothing yet; Run or Get fetches.
func New(cfg Config) *Source {
	return &Source{held: heldcopy.New(heldcopy.Config[*Bundle]{
		What: "jwt bundle",
		Fetch: func(ctx context.Context) (*Bundle, error) {
			resp, err := cfg.KMS.GetJWTBundle(ctx, &kmsv1.GetJWTBundleRequest{})
			if err != nil {
				return nil, fmt.Errorf("fetching the jwt bundle from kms-adapter: %w", err)
			}
			return Parse(cfg.TrustDomain, resp)
		},
		Version:     func(b *Bundle) uint64 { return b.Version },
		Unavailable: ErrUnavailable,
		Refresh:     cfg.Refresh, Timeout: cfg.Timeout, Clock: cfg.Clock, Logger: cfg.Logger, OnUpdate: cfg.OnUpdate,
	})}
}

// Run fetches at once, then every Refresh, until ctx ends; failures keep the last good bundle.
func (s *Source) Run(ctx context.Context) error { return s.held.Run(ctx) }

// Get returns the held bundle, fetching one first if none is held yet.
func (s *Source) Get(ctx context.Context) (*Bundle, error) { return s.held.Get(ctx) }

// Refresh fetches the bundle now (an event says it changed).
func (s *Source) Refresh(ctx context.Context) (*Bundle, error) { return s.held.Refresh(ctx) }

// Parse checks kms-adapter's answer: a JWK Set of at most MaxJWKSBytes for td that go-spiffe (what
// agents and apps verify with) can read, with at least one key. It is passed on as served.
func Parse(td spiffeid.TrustDomain, resp *kmsv1.GetJWTBundleResponse) (*Bundle, error) {
	if resp.GetTrustDomain() != td.Name() {
		return nil, fmt.Errorf("kms-adapter returned a jwt bundle for trust domain %q, want %q", resp.GetTrustDomain(), td.Name())
	}
	if n := len(resp.GetJwks()); n > MaxJWKSBytes {
		return nil, fmt.Errorf("kms-adapter returned a jwt bundle of %d bytes, at most %d accepted", n, MaxJWKSBytes)
	}
	b, err := jwtbundle.Parse(td, resp.GetJwks())
	if err != nil {
		return nil, fmt.Errorf("kms-adapter returned an unreadable jwt bundle: %w", err)
	}
	if b.Empty() {
		return nil, errors.New("kms-adapter returned a jwt bundle without keys")
	}
	return &Bundle{TrustDomain: td.Name(), JWKS: resp.GetJwks(), Version: resp.GetVersion(), Keys: len(b.JWTAuthorities())}, nil
}

// Package trustbundle keeps the workload trust bundle (the roots workload certificates chain to)
// that citadel hands to node agents. kms-adapter owns the bundle; citadel holds the last good copy
// so that agents still get roots while kms-adapter is down.
package trustbundle

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/heldcopy"
)

// ErrUnavailable means no bundle is held and kms-adapter could not provide one.
var ErrUnavailable = errors.New("trust bundle unavailable")

// KMS is the part of kms-adapter's API the source uses; kmsv1.KeyManagementServiceClient
// satisfies it.
type KMS interface {
	GetTrustBundle(ctx context.Context, in *kmsv1.GetTrustBundleRequest, opts ...grpc.CallOption) (*kmsv1.GetTrustBundleResponse, error)
}

// Bundle is one trust bundle. It is immutable once returned.
type Bundle struct {
	TrustDomain    string
	Roots          [][]byte // DER
	Version        uint64   // kms-adapter's bundle version (0: unversioned)
	EarliestExpiry time.Time
}

// Config carries the source's dependencies.
type Config struct {
	KMS     KMS
	Refresh time.Duration // interval between refreshes
	Timeout time.Duration // bound on one fetch; 0 means 10s
	Clock   clock.WithTicker
	Logger  *slog.Logger
	// OnUpdate, if set, is called with every newly held bundle (e.g. to export the root expiry).
	OnUpdate func(*Bundle)
}

// Source holds the last good bundle. It is safe for concurrent use.
type Source struct {
	held *heldcopy.Source[*Bundle]
}

// New returns a source that holds nothing yet; Run or Get fetches.
func New(cfg Config) *Source {
	return &Source{held: heldcopy.New(heldcopy.Config[*Bundle]{
		What: "trust bundle",
		Fetch: func(ctx context.Context) (*Bundle, error) {
			resp, err := cfg.KMS.GetTrustBundle(ctx, &kmsv1.GetTrustBundleRequest{})
			if err != nil {
				return nil, fmt.Errorf("fetching trust bundle from kms-adapter: %w", err)
			}
			return parse(resp)
		},
		Version:     func(b *Bundle) uint64 { return b.Version },
		Unavailable: ErrUnavailable,
		Refresh:     cfg.Refresh, Timeout: cfg.Timeout, Clock: cfg.Clock, Logger: cfg.Logger, OnUpdate: cfg.OnUpdate,
	})}
}

// Run fetches at once, then every Refresh, until ctx ends. A failed refresh is logged and the last
// good bundle stays in force; it never stops Run.
func (s *Source) Run(ctx context.Context) error { return s.held.Run(ctx) }

// Get returns the held bundle, fetching one first if none is held yet.
func (s *Source) Get(ctx context.Context) (*Bundle, error) { return s.held.Get(ctx) }

// Roots returns the held bundle's roots, parsed.
func (s *Source) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	b, err := s.Get(ctx)
	if err != nil {
		return nil, err
	}
	roots := make([]*x509.Certificate, 0, len(b.Roots))
	for _, der := range b.Roots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parsing trust bundle root: %w", err)
		}
		roots = append(roots, c)
	}
	return roots, nil
}

// Refresh fetches the bundle now (a rotation event says it changed). A failure keeps the last
// good bundle and is returned.
func (s *Source) Refresh(ctx context.Context) (*Bundle, error) { return s.held.Refresh(ctx) }

// Current is the held bundle, or nil.
func (s *Source) Current() *Bundle {
	b, _ := s.held.Current()
	return b
}

func parse(resp *kmsv1.GetTrustBundleResponse) (*Bundle, error) {
	if resp.GetTrustDomain() == "" || len(resp.GetRootCertificates()) == 0 {
		return nil, errors.New("kms-adapter returned an empty trust bundle")
	}
	b := &Bundle{TrustDomain: resp.GetTrustDomain(), Version: resp.GetVersion()}
	for i, der := range resp.GetRootCertificates() {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("kms-adapter trust bundle root %d: %w", i, err)
		}
		if b.EarliestExpiry.IsZero() || cert.NotAfter.Before(b.EarliestExpiry) {
			b.EarliestExpiry = cert.NotAfter
		}
		b.Roots = append(b.Roots, der)
	}
	return b, nil
}

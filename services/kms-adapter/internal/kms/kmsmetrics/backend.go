package kmsmetrics

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// Config wraps Backend with metrics registered on Registerer.
type Config struct {
	Backend    kms.Backend
	Registerer prometheus.Registerer
	Clock      clock.PassiveClock // nil means the real clock
}

// Backend is a kms.Backend that counts and times signatures and exports the CA's expiry. It is safe
// for concurrent use when the wrapped backend is.
type Backend struct {
	next        kms.Backend
	clock       clock.PassiveClock
	signs       *prometheus.CounterVec
	duration    prometheus.Histogram
	rootExpiry  prometheus.Gauge
	interExpiry prometheus.Gauge
}

var _ kms.Backend = (*Backend)(nil)

// Wrap registers the metrics and sets the expiry gauges from the backend's current CA, so that an
// alert on an expiring CA works from the first scrape, before anything is signed.
func Wrap(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	b := &Backend{
		next:  cfg.Backend,
		clock: cfg.Clock,
		signs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: SignTotal,
			Help: "Certificate signing requests handled by the KMS backend, by result (ok, invalid, error).",
		}, []string{LabelResult}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: SignDurationSeconds,
			Help: "Time the KMS backend took to sign a certificate, whatever the result.",
			// 100µs (local CA) to ~6.5s (a slow Vault).
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}),
		rootExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: RootExpiryTimestampSeconds,
			Help: "Unix time at which the root CA that leaves chain to expires.",
		}),
		interExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: IntermediateExpiryTimestampSeconds,
			Help: "Unix time at which the intermediate CA that signs leaves expires.",
		}),
	}
	for _, c := range []prometheus.Collector{b.signs, b.duration, b.rootExpiry, b.interExpiry} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("registering kms metrics: %w", err)
		}
	}
	// Zero series for every result, so that rate() and absent() behave before the first failure.
	for _, r := range []string{ResultOK, ResultInvalid, ResultError} {
		b.signs.WithLabelValues(r)
	}
	if err := b.refreshExpiry(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Sign implements kms.Backend.
func (b *Backend) Sign(ctx context.Context, req kms.SignRequest) ([]*x509.Certificate, error) {
	start := b.clock.Now()
	chain, err := b.next.Sign(ctx, req)
	b.duration.Observe(b.clock.Since(start).Seconds())
	b.signs.WithLabelValues(result(err)).Inc()
	if err == nil && len(chain) > 0 {
		// The chain names the CA that really signed, which follows a rotation without a restart.
		b.setExpiry(chain[1:])
	}
	return chain, err
}

// TrustBundle implements kms.Backend.
func (b *Backend) TrustBundle(ctx context.Context) (kms.Bundle, error) {
	return b.next.TrustBundle(ctx)
}

func (b *Backend) refreshExpiry(ctx context.Context) error {
	if sc, ok := b.next.(kms.SigningChainer); ok {
		chain, err := sc.SigningChain(ctx)
		if err != nil {
			return fmt.Errorf("reading the signing chain: %w", err)
		}
		b.setExpiry(chain)
		return nil
	}
	// Without a signing chain the intermediate is learned from the first signature.
	bundle, err := b.next.TrustBundle(ctx)
	if err != nil {
		return fmt.Errorf("reading the trust bundle: %w", err)
	}
	latest := 0.0
	for _, root := range bundle.Roots {
		latest = max(latest, float64(root.NotAfter.Unix()))
	}
	b.rootExpiry.Set(latest)
	return nil
}

// setExpiry reads issuers ordered issuing CA first, root last.
func (b *Backend) setExpiry(issuers []*x509.Certificate) {
	if len(issuers) == 0 {
		return
	}
	b.rootExpiry.Set(float64(issuers[len(issuers)-1].NotAfter.Unix()))
	if len(issuers) > 1 {
		b.interExpiry.Set(float64(issuers[0].NotAfter.Unix()))
	}
}

func result(err error) string {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, kms.ErrInvalidCSR), errors.Is(err, kms.ErrInvalidIdentity):
		return ResultInvalid
	default:
		return ResultError
	}
}

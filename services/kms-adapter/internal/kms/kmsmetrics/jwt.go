package kmsmetrics

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// JWT is the JWT-SVID signer's instruments.
type JWT struct {
	// Signatures counts SignJWTSVID calls by LabelResult (ResultOK, ResultInvalid, ResultError).
	Signatures *prometheus.CounterVec
}

// NewJWT registers the JWT-SVID metrics on reg; activeKeyAge reports how long the active key has
// been signing.
func NewJWT(reg prometheus.Registerer, activeKeyAge func() time.Duration) (*JWT, error) {
	m := &JWT{Signatures: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: JWTSignTotal, Help: "JWT-SVID signing requests, by result: ok, invalid (a caller problem), error (an operator problem).",
	}, []string{LabelResult})}
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: JWTActiveKeyAgeSeconds, Help: "How long the active JWT-SVID signing key has been signing.",
	}, func() float64 { return activeKeyAge().Seconds() })
	for _, c := range []prometheus.Collector{m.Signatures, age} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering jwt metrics: %w", err)
		}
	}
	for _, r := range []string{ResultOK, ResultInvalid, ResultError} {
		m.Signatures.WithLabelValues(r)
	}
	return m, nil
}

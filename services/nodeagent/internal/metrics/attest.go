package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Node attestation metric names: alert on an expiry that comes near, or on failures that last.
const (
	controlPlaneCertExpiry = "portcullis_nodeagent_control_plane_cert_expiry_timestamp_seconds"
	attestFailures         = "portcullis_nodeagent_attest_failures_total"
)

// Attest implements attestclient.Observer.
type Attest struct {
	expiry   prometheus.Gauge
	failures prometheus.Counter
}

// NewAttest registers the node attestation metrics on reg.
func NewAttest(reg prometheus.Registerer) *Attest {
	a := &Attest{
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: controlPlaneCertExpiry,
			Help: "Unix time at which the agent's control-plane certificate (obtained by node attestation) expires."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: attestFailures,
			Help: "Node attestations (first or renewal) that failed; each is retried with backoff."}),
	}
	reg.MustRegister(a.expiry, a.failures)
	return a
}

// Attested records a new control-plane certificate.
func (a *Attest) Attested(notAfter time.Time) { a.expiry.Set(float64(notAfter.Unix())) }

// AttestFailed counts a failed attestation.
func (a *Attest) AttestFailed() { a.failures.Inc() }

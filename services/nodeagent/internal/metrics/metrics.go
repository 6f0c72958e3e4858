// Package metrics defines the node agent's Prometheus metrics and implements the observers of
// the secrets and sds packages with them.
package metrics

import (
	"crypto/x509"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
)

// Metric names.
const (
	sdsStreams        = "portcullis_nodeagent_sds_streams"
	sdsPushes         = "portcullis_nodeagent_sds_pushes_total"
	sdsNacks          = "portcullis_nodeagent_sds_nacks_total"
	sdsRefused        = "portcullis_nodeagent_sds_refused_total"
	sdsLimitRefused   = "portcullis_nodeagent_sds_limit_refusals_total"
	sdsUnauth         = "portcullis_nodeagent_sds_unauthenticated_streams"
	sdsResumed        = "portcullis_nodeagent_sds_resumed_streams_total"
	certIssued        = "portcullis_nodeagent_cert_issuance_total"
	certIssueFailed   = "portcullis_nodeagent_cert_issuance_failures_total"
	certIssueSeconds  = "portcullis_nodeagent_cert_issuance_duration_seconds"
	certExpiry        = "portcullis_nodeagent_cert_expiry_timestamp_seconds"
	bundleRoots       = "portcullis_nodeagent_trust_bundle_roots"
	bundleRootsExpiry = "portcullis_nodeagent_trust_bundle_earliest_expiry_timestamp_seconds"
	bundleVersion     = "portcullis_nodeagent_trust_bundle_version"
	eventApplied      = "portcullis_nodeagent_event_to_update_seconds"
)

// Metrics implements secrets.Observer and sds.Observer.
type Metrics struct {
	streams       prometheus.Gauge
	pushes        *prometheus.CounterVec
	nacks         prometheus.Counter
	refused       *prometheus.CounterVec
	limitRefused  *prometheus.CounterVec
	unauth        prometheus.Gauge
	resumed       prometheus.Counter
	issued        prometheus.Counter
	issueFailed   prometheus.Counter
	issueDuration prometheus.Histogram
	expiry        *prometheus.GaugeVec
	roots         prometheus.Gauge
	rootsExpiry   prometheus.Gauge
	version       prometheus.Gauge
	applied       *prometheus.HistogramVec
}

// New registers the metrics on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: sdsStreams, Help: "Open SDS streams."}),
		pushes:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: sdsPushes, Help: "Secrets pushed on SDS streams, by resource name."}, []string{"resource"}),
		nacks:   prometheus.NewCounter(prometheus.CounterOpts{Name: sdsNacks, Help: "SDS updates a sidecar rejected."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: sdsRefused, Help: "SDS calls refused, by gRPC code."}, []string{"code"}),
		limitRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: sdsLimitRefused,
			Help: "SDS streams refused or ended by a limit, by reason: first_request_timeout, unauthenticated_streams, streams_per_connection, streams_per_caller."}, []string{"reason"}),
		unauth:        prometheus.NewGauge(prometheus.GaugeOpts{Name: sdsUnauth, Help: "SDS streams open that have not sent their first request."}),
		resumed:       prometheus.NewCounter(prometheus.CounterOpts{Name: sdsResumed, Help: "Silent SDS streams answered with the names their identity asked for before (sidecars such as MOSN that reconnect without asking again)."}),
		issued:        prometheus.NewCounter(prometheus.CounterOpts{Name: certIssued, Help: "Workload certificates issued."}),
		issueFailed:   prometheus.NewCounter(prometheus.CounterOpts{Name: certIssueFailed, Help: "Failed certificate issuances and renewals."}),
		issueDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: certIssueSeconds, Help: "Time to make a key and get it signed.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		expiry:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: certExpiry, Help: "Expiry of each identity's current certificate."}, []string{"spiffe_id"}),
		roots:         prometheus.NewGauge(prometheus.GaugeOpts{Name: bundleRoots, Help: "Roots in the trust bundle."}),
		rootsExpiry:   prometheus.NewGauge(prometheus.GaugeOpts{Name: bundleRootsExpiry, Help: "Earliest expiry among the trust bundle's roots."}),
		version:       prometheus.NewGauge(prometheus.GaugeOpts{Name: bundleVersion, Help: "Version of the trust bundle the agent holds (kms-adapter's numbering)."}),
		applied: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: eventApplied, Help: "Time from a rotation event's arrival until its update (bundle or certificate) was ready to push on SDS streams, jitter included.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}, []string{"kind"}),
	}
	reg.MustRegister(m.streams, m.pushes, m.nacks, m.refused, m.limitRefused, m.unauth, m.resumed, m.issued, m.issueFailed, m.issueDuration, m.expiry, m.roots, m.rootsExpiry, m.version, m.applied)
	return m
}

func (m *Metrics) StreamOpened()                  { m.streams.Inc() }
func (m *Metrics) StreamClosed()                  { m.streams.Dec() }
func (m *Metrics) Pushed(name string)             { m.pushes.WithLabelValues(resourceLabel(name)).Inc() }
func (m *Metrics) Nacked(_ []string, _ string)    { m.nacks.Inc() }
func (m *Metrics) Refused(code codes.Code)        { m.refused.WithLabelValues(code.String()).Inc() }
func (m *Metrics) IssueFailed(spiffeid.ID, error) { m.issueFailed.Inc() }
func (m *Metrics) Resumed()                       { m.resumed.Inc() }
func (m *Metrics) LimitRefused(reason string)     { m.limitRefused.WithLabelValues(reason).Inc() }
func (m *Metrics) Unauthenticated(delta int)      { m.unauth.Add(float64(delta)) }
func (m *Metrics) Dropped(id spiffeid.ID)         { m.expiry.DeleteLabelValues(id.String()) }

func (m *Metrics) Issued(id spiffeid.ID, leaf *x509.Certificate, took time.Duration) {
	m.issued.Inc()
	m.issueDuration.Observe(took.Seconds())
	m.expiry.WithLabelValues(id.String()).Set(float64(leaf.NotAfter.Unix()))
}

func (m *Metrics) BundleVersion(v uint64) { m.version.Set(float64(v)) }
func (m *Metrics) EventApplied(kind string, took time.Duration) {
	m.applied.WithLabelValues(kind).Observe(took.Seconds())
}

func (m *Metrics) BundleChanged(roots []*x509.Certificate) {
	m.roots.Set(float64(len(roots)))
	var earliest time.Time
	for _, r := range roots {
		if earliest.IsZero() || r.NotAfter.Before(earliest) {
			earliest = r.NotAfter
		}
	}
	m.rootsExpiry.Set(float64(earliest.Unix()))
}

// resourceLabel keeps the label's cardinality bounded: SPIFFE ID names count as "default".
func resourceLabel(name string) string {
	if name == "ROOTCA" {
		return name
	}
	if strings.HasPrefix(name, "key/") {
		return "keysecret" // KeySecrets are counted together, never by name
	}
	return "default"
}

// Package metrics defines mcp-sync's Prometheus metrics. Every metric name and label lives here.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric names.
const (
	ObjectsName         = "mcp_sync_objects"
	SourceErrorsName    = "mcp_sync_source_errors_total"
	SnapshotUpdatesName = "mcp_sync_snapshot_updates_total"
	StreamsName         = "mcp_sync_streams"
	LastGoodLoadName    = "mcp_sync_last_good_load_timestamp_seconds"
	MalformedName       = "mcp_sync_malformed_objects"
	GatewayRejectedName = "mcp_sync_gateway_certificates_rejected_total"
	GatewayReviewsName  = "mcp_sync_gateway_access_reviews_total"
)

// Label names and values.
const (
	KindLabel          = "kind"
	KindPod            = "pod"
	KindServiceAccount = "service_account"
	KindNamespace      = "namespace"
	KindKeySecret      = "key_secret"
	KindTLSPolicy      = "tls_policy"
	KindScopeConfig    = "scope_config"
	KindGatewayCert    = "gateway_certificate"
	NamespaceLabel     = "namespace"
	NameLabel          = "name"
	ReasonLabel        = "reason"
	ResultLabel        = "result"
)

// kindLabelValues are the kind label values by inventory.Kind.
var kindLabelValues = []string{KindPod, KindServiceAccount, KindNamespace, KindKeySecret, KindTLSPolicy, KindScopeConfig, KindGatewayCert}

// KindLabelValue is the kind label value of an inventory.Kind (passed as its int value, so that
// this package stays a leaf).
func KindLabelValue(kind int) string { return kindLabelValues[kind] }

// Metrics are mcp-sync's metrics. The zero value is not usable; use New.
type Metrics struct {
	Objects         *prometheus.GaugeVec
	SourceErrors    prometheus.Counter
	SnapshotUpdates prometheus.Counter
	Streams         prometheus.Gauge
	LastGoodLoad    prometheus.Gauge
	// Malformed is 1 for each object the source skips as malformed, by kind, namespace and name;
	// the series goes away when the object is fixed or deleted.
	Malformed *prometheus.GaugeVec
	// GatewayRejected counts opted-in TLS Secrets refused (bad PEM, key mismatch, expired), by
	// reason; GatewayReviews counts SubjectAccessReviews by result.
	GatewayRejected *prometheus.CounterVec
	GatewayReviews  *prometheus.CounterVec
}

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: ObjectsName,
			Help: "Objects in the current state, by kind.",
		}, []string{KindLabel}),
		SourceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: SourceErrorsName,
			Help: "Problems the source worked around by keeping the last good data (broken manifests, watch failures).",
		}),
		SnapshotUpdates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: SnapshotUpdatesName,
			Help: "Per-node snapshots replaced because their content changed.",
		}),
		Streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: StreamsName,
			Help: "Open MCP (xDS) streams.",
		}),
		LastGoodLoad: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: LastGoodLoadName,
			Help: "Unix time of the last load that read the whole source without error.",
		}),
	}
	m.Malformed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: MalformedName,
		Help: "Objects skipped because they are malformed (1 per object), by kind, namespace and name.",
	}, []string{KindLabel, NamespaceLabel, NameLabel})
	m.GatewayRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: GatewayRejectedName,
		Help: "Updates of opted-in kubernetes.io/tls Secrets refused (the last good version stays served), by reason.",
	}, []string{ReasonLabel})
	m.GatewayReviews = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: GatewayReviewsName,
		Help: "SubjectAccessReviews asking whether a pod's service account may read a gateway certificate Secret, by result (allowed, denied, error).",
	}, []string{ResultLabel})
	reg.MustRegister(m.Objects, m.SourceErrors, m.SnapshotUpdates, m.Streams, m.LastGoodLoad, m.Malformed, m.GatewayRejected, m.GatewayReviews)
	return m
}

// NewRegistry returns a registry with the Go and process collectors, for the service's own
// metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Package metrics holds citadel's Prometheus metrics. The citadel_server_* names are Istio's, so
// dashboards and alerts written for istiod's CA keep working against citadel.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric names, all in one place.
const (
	CSRCount               = "citadel_server_csr_count"
	AuthenticationFailures = "citadel_server_authentication_failure_count"
	CSRParsingErrors       = "citadel_server_csr_parsing_err_count"
	CSRSignErrors          = "citadel_server_csr_sign_err_count"
	SuccessCertIssuance    = "citadel_server_success_cert_issuance_count"
	RootCertExpiry         = "citadel_server_root_cert_expiry_timestamp"
	CacheHits              = "portcullis_citadel_cache_hits_total"
	CacheMisses            = "portcullis_citadel_cache_misses_total"
	KMSSignDuration        = "portcullis_citadel_kms_sign_duration_seconds"
	AuthorizationFailures  = "portcullis_citadel_authorization_failure_count"
	RefusedBeforeHandler   = "portcullis_citadel_refused_before_handler_total"
	JWTMints               = "portcullis_citadel_jwt_mint_total"
	KMSJWTSignDuration     = "portcullis_citadel_kms_jwt_sign_duration_seconds"
	JWTBundleVersion       = "portcullis_citadel_jwt_bundle_version"
)

// Results of JWTMints.
const (
	ResultOK          = "ok"
	ResultRefused     = "refused"      // not a node agent, workload not authenticated or not on the node
	ResultInvalid     = "invalid"      // bad audiences or ttl
	ResultRateLimited = "rate_limited" // the node's bucket is empty
	ResultError       = "error"        // kms-adapter failed or is unreachable
)

// Reasons of RefusedBeforeHandler.
const (
	ReasonBadClientCertificate = "bad_client_certificate" // refused in the TLS handshake
	ReasonNoClientCertificate  = "no_client_certificate"
	ReasonCallerNotAllowed     = "caller_not_allowed" // a verified identity that may not call the method
)

// Metrics are citadel's instruments. All fields are safe for concurrent use.
type Metrics struct {
	CSRCount               prometheus.Counter
	AuthenticationFailures prometheus.Counter
	AuthorizationFailures  prometheus.Counter
	CSRParsingErrors       prometheus.Counter
	CSRSignErrors          prometheus.Counter
	SuccessCertIssuance    prometheus.Counter
	RootCertExpiry         prometheus.Gauge
	CacheHits              prometheus.Counter
	CacheMisses            prometheus.Counter
	KMSSignDuration        prometheus.Histogram
	RefusedBeforeHandler   *prometheus.CounterVec
	JWTMints               *prometheus.CounterVec
	KMSJWTSignDuration     prometheus.Histogram
	JWTBundleVersion       prometheus.Gauge
}

// New registers citadel's metrics on reg.
func New(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	m := &Metrics{
		CSRCount:               counter(CSRCount, "Certificate signing requests received."),
		AuthenticationFailures: counter(AuthenticationFailures, "Requests refused because the workload token did not verify."),
		AuthorizationFailures:  counter(AuthorizationFailures, "Requests refused because the caller may not obtain the identity (wrong node, pod, uid or service account)."),
		CSRParsingErrors:       counter(CSRParsingErrors, "CSRs that could not be parsed or were not acceptable."),
		CSRSignErrors:          counter(CSRSignErrors, "CSRs that kms-adapter failed to sign."),
		SuccessCertIssuance:    counter(SuccessCertIssuance, "Certificate chains returned, from the cache or freshly signed."),
		RootCertExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: RootCertExpiry, Help: "Unix time at which the earliest-expiring root of the trust bundle expires.",
		}),
		CacheHits:   counter(CacheHits, "Requests answered from the certificate cache without calling kms-adapter."),
		CacheMisses: counter(CacheMisses, "Requests that needed a fresh signature."),
		KMSSignDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: KMSSignDuration, Help: "Latency of kms-adapter SignCertificate calls.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
	}
	m.RefusedBeforeHandler = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: RefusedBeforeHandler,
		Help: "Connections and calls refused before any handler ran, by reason: a client certificate the TLS handshake refused, none, or an identity that may not call the method.",
	}, []string{"reason"})
	m.JWTMints = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: JWTMints, Help: "MintJWTSVID calls by result: ok, refused, invalid, rate_limited, error.",
	}, []string{"result"})
	for _, r := range []string{ResultOK, ResultRefused, ResultInvalid, ResultRateLimited, ResultError} {
		m.JWTMints.WithLabelValues(r)
	}
	m.KMSJWTSignDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: KMSJWTSignDuration, Help: "Latency of kms-adapter SignJWTSVID calls.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	m.JWTBundleVersion = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: JWTBundleVersion, Help: "Version of the JWT bundle citadel holds (kms-adapter's).",
	})
	reg.MustRegister(m.RootCertExpiry, m.KMSSignDuration, m.RefusedBeforeHandler, m.JWTMints, m.KMSJWTSignDuration, m.JWTBundleVersion)
	return m
}

// NewRegistry is citadel's own registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

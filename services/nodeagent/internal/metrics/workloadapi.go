package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Workload API metric names.
const (
	workloadAPICalls   = "portcullis_nodeagent_workload_api_calls_total"
	workloadAPIWatches = "portcullis_nodeagent_workload_api_watches"
	jwtSVIDCache       = "portcullis_nodeagent_jwt_svid_cache_total"
)

// WorkloadAPI implements workloadapi.Observer.
type WorkloadAPI struct {
	calls   *prometheus.CounterVec
	watches *prometheus.GaugeVec
	cache   *prometheus.CounterVec
}

// NewWorkloadAPI registers the Workload API metrics on reg.
func NewWorkloadAPI(reg prometheus.Registerer) *WorkloadAPI {
	w := &WorkloadAPI{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: workloadAPICalls,
			Help: "Workload API calls (gRPC, and HTTP as /v1/...), by method and gRPC code (a stream counts when it ends)."}, []string{"method", "code"}),
		watches: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: workloadAPIWatches,
			Help: "Open Workload API streams, by method."}, []string{"method"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{Name: jwtSVIDCache,
			Help: "JWT-SVID requests by result: hit (served from the agent's cache) or miss (minted by citadel)."}, []string{"result"}),
	}
	reg.MustRegister(w.calls, w.watches, w.cache)
	return w
}

// Called counts a finished call.
func (w *WorkloadAPI) Called(method string, code codes.Code) {
	w.calls.WithLabelValues(method, code.String()).Inc()
}

// WatchOpened and WatchClosed track open streams.
func (w *WorkloadAPI) WatchOpened(method string) { w.watches.WithLabelValues(method).Inc() }

// WatchClosed is WatchOpened's pair.
func (w *WorkloadAPI) WatchClosed(method string) { w.watches.WithLabelValues(method).Dec() }

// JWTSVIDCache counts a JWT-SVID request by whether the cache answered it.
func (w *WorkloadAPI) JWTSVIDCache(hit bool) {
	if hit {
		w.cache.WithLabelValues("hit").Inc()
	} else {
		w.cache.WithLabelValues("miss").Inc()
	}
}

package lifecycle

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminReadHeaderTimeout bounds how long a client may take to send its request headers: long
// enough for a slow scraper, short enough that idle half-open connections do not pile up.
const adminReadHeaderTimeout = 10 * time.Second

// Admin serves /metrics from the service's own registry, /healthz (the process is up) and
// /readyz (ready reports nil).
type Admin struct {
	Addr     string
	Gatherer prometheus.Gatherer
	Ready    func() error
	Logger   *slog.Logger
}

// ProfilingEnv enables /debug/pprof on every admin endpoint when set to 1. It is off by
// default: profiles expose memory contents, and the admin port is not authenticated.
const ProfilingEnv = "PORTCULLIS_PPROF"

// Run listens on Addr and serves until ctx ends.
func (a Admin) Run(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.Ready != nil {
			if err := a.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if os.Getenv(ProfilingEnv) == "1" {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		a.Logger.Warn("profiling enabled on the admin endpoint", "env", ProfilingEnv)
	}
	lis, err := Listen(a.Logger, "admin", a.Addr)
	if err != nil {
		return err
	}
	return ServeHTTP(ctx, &http.Server{Handler: mux, ReadHeaderTimeout: adminReadHeaderTimeout}, lis)
}

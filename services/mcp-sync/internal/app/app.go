// Package app wires mcp-sync together: source -> snapshot manager -> xDS server, plus the admin
// endpoint.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/config"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/gatewaycert"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/server"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/snapshot"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source"
)

// clusterViewDelay coalesces pod changes into citadel's whole-cluster view: at 100,000 pods a
// rebuild copies every pod and a push sends them all, so it happens at most 10 times a second.
// Node views are not delayed.
const clusterViewDelay = 100 * time.Millisecond

// App is a configured mcp-sync.
type App struct {
	cfg       config.Config
	logger    *slog.Logger
	metrics   *metrics.Metrics
	admin     lifecycle.Admin
	source    source.Source
	snapshots *snapshot.Manager
	server    *server.Server
	gateways  *gatewaycert.Controller // nil unless -source=kube and -gateway-certificates
}

// New builds every part; nothing listens or reads until Run.
func New(cfg config.Config, logger *slog.Logger) (*App, error) {
	id, err := servicetls.Load(cfg.TLS)
	if err != nil {
		return nil, err
	}
	reg := metrics.NewRegistry()
	m := metrics.New(reg)
	src, err := source.New(cfg.Source, source.Options{
		Logger:       logger,
		Clock:        clock.RealClock{},
		Errors:       m.SourceErrors,
		LastGoodLoad: m.LastGoodLoad,
		Malformed:    m.Malformed,
		ManifestsDir: cfg.ManifestsDir,
		Resync:       cfg.Resync,
		Kubeconfig:   cfg.Kubeconfig,
	})
	if err != nil {
		return nil, err
	}
	snaps, err := snapshot.New(snapshot.Config{Logger: logger, Metrics: m, ClusterDelay: clusterViewDelay})
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{Identity: id, Cache: snaps.Cache(), Nodes: snaps, Logger: logger, Metrics: m})
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, logger: logger, metrics: m, source: src, snapshots: snaps, server: srv}
	if cfg.Source == "kube" && cfg.GatewayCertificates {
		if a.gateways, err = newGateways(cfg, logger, m, snaps); err != nil {
			return nil, err
		}
	}
	a.admin = lifecycle.Admin{Addr: cfg.AdminListen, Gatherer: reg, Ready: a.ready, Logger: logger}
	logger.Info("configured", "source", cfg.Source, "identity", id.ID().String())
	return a, nil
}

// Run serves until ctx ends or a part fails.
func (a *App) Run(ctx context.Context) error {
	lis, err := lifecycle.Listen(a.logger, "grpc", a.cfg.Listen)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.server.Serve(ctx, lis) })
	g.Go(func() error { return a.admin.Run(ctx) })
	g.Go(func() error { return a.source.Run(ctx, a.apply) })
	if a.gateways != nil {
		g.Go(func() error { return a.gateways.Run(ctx) })
	}
	return g.Wait()
}

func (a *App) apply(u source.Update) {
	if err := a.snapshots.Apply(u); err != nil {
		// The previous views stay in force; the next change retries.
		a.logger.Error("updating snapshots, keeping the previous ones", "err", err)
		a.metrics.SourceErrors.Inc()
		return
	}
	if a.gateways != nil {
		a.gateways.ObservePods(u)
	}
	a.server.SetReady()
	// A full update is rare (start-up, file rescans); single changes are too frequent to log.
	if u.Full {
		a.logger.Info("state updated", "objects", len(u.Changes))
	} else {
		a.logger.Debug("changes applied", "changes", len(u.Changes))
	}
}

var errNotLoaded = errors.New("the first state has not been loaded yet")

func (a *App) ready() error {
	if !a.snapshots.Loaded() {
		return errNotLoaded
	}
	return nil
}

// newGateways builds the gateway certificate controller with its own Kubernetes client (typed:
// Secrets, Events, SubjectAccessReviews).
func newGateways(cfg config.Config, logger *slog.Logger, m *metrics.Metrics, snaps *snapshot.Manager) (*gatewaycert.Controller, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "portcullis-mcp-sync"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return gatewaycert.New(gatewaycert.Config{
		Client: client, Snapshots: snaps, Logger: logger,
		Rejected: m.GatewayRejected, Reviews: m.GatewayReviews, ReviewTTL: cfg.GatewayReviewTTL,
	})
}

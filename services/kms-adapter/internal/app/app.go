// Package app wires kms-adapter together: identity, CA backend, metrics, gRPC API and admin server.
package app

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/health"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/natsserver"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/config"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/expiry"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/grpcapi"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/jwtkeys"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmsmetrics"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/vault"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/revocation"
)

// JWTKeysDir is the JWT-SVID signing keys' directory in the state directory.
const JWTKeysDir = "jwt"

// readyTimeout bounds a readiness probe's look at the backend.
const readyTimeout = 2 * time.Second

// App is a built kms-adapter, ready to Run.
type App struct {
	cfg      config.Config
	logger   *slog.Logger
	identity *servicetls.Identity
	registry *prometheus.Registry
	backend  kms.Backend
	runner   kms.Runner // the backend's background work, if it has any (vault)
	api      *grpcapi.Server
	rotator  kms.Rotator     // nil when the backend's CA is not rotated here
	expiry   *expiry.Tracker // nil when events are disabled
	announce *announcer      // queues events until the publisher runs
	jwtKeys  *jwtkeys.Manager
}

// New loads the service identity, opens the backend named by cfg.Backend and instruments it.
func New(ctx context.Context, cfg config.Config, logger *slog.Logger) (*App, error) {
	identity, err := servicetls.Load(cfg.TLS)
	if err != nil {
		return nil, err
	}
	td := identity.TrustDomain()
	clk := clock.RealClock{}
	ann := &announcer{td: td}
	backends := kms.Registry{
		kms.BackendLocal: func(context.Context) (kms.Backend, error) {
			return local.New(local.Config{StateDir: cfg.StateDir, TrustDomain: td, DefaultTTL: cfg.DefaultTTL,
				MaxTTL: cfg.MaxTTL, RootTTL: cfg.RootTTL, Clock: clk, Logger: logger, Observer: ann.rotation})
		},
		kms.BackendVault: func(ctx context.Context) (kms.Backend, error) {
			vc := cfg.VaultBackend()
			vc.TrustDomain, vc.Clock, vc.Logger = td, clk, logger
			vc.OnBundleChange = ann.bundle // Vault's issuer rotation feeds the same events
			return vault.New(ctx, vc)
		},
	}
	backend, err := backends.Open(ctx, cfg.Backend)
	if err != nil {
		return nil, err
	}
	if err := logCA(ctx, logger.With(logkey.Backend, cfg.Backend), backend); err != nil {
		return nil, err
	}
	registry := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := registry.Register(c); err != nil {
			return nil, fmt.Errorf("registering runtime metrics: %w", err)
		}
	}
	rotator, _ := backend.(kms.Rotator)
	runner := runnerOf(backend)
	var tracker *expiry.Tracker
	var apiAnnounce grpcapi.Announcer
	if cfg.EventsEnabled() {
		tracker = expiry.Wrap(backend, expiry.Config{Announce: ann, Clock: clk, Lead: cfg.ExpiryWarning})
		backend, apiAnnounce = tracker, ann
	} else {
		ann.start(discard{})
		logger.Warn("rotation events are disabled (no -nats-url, -nats-embedded=false): agents learn of CA changes only by polling")
	}
	// The revocations live beside the local CA's state, and in the same directory with Vault:
	// kms-adapter is their authority whatever signs (see docs/rotation.md).
	revocations, err := revocation.Open(revocation.Config{Dir: cfg.StateDir, MaxLifetime: cfg.MaxTTL + local.ClockSkew, Clock: clk})
	if err != nil {
		return nil, err
	}
	backend = revocation.Wrap(backend, revocations)
	alg, err := jwtkeys.ParseAlgorithm(cfg.JWTAlgorithm)
	if err != nil {
		return nil, err
	}
	// Local to kms-adapter with every backend: see the package doc of jwtkeys.
	jwtKeys, err := jwtkeys.Open(jwtkeys.Config{Dir: filepath.Join(cfg.StateDir, JWTKeysDir), TrustDomain: td, Algorithm: alg,
		KeyTTL: cfg.JWTKeyTTL, MaxTokenTTL: cfg.JWTMaxTTL, Clock: clk, Logger: logger, Observer: ann.jwtBundle})
	if err != nil {
		return nil, err
	}
	jwtMetrics, err := kmsmetrics.NewJWT(registry, jwtKeys.ActiveKeyAge)
	if err != nil {
		return nil, err
	}
	instrumented, err := kmsmetrics.Wrap(ctx, kmsmetrics.Config{Backend: backend, Registerer: registry, Clock: clk})
	if err != nil {
		return nil, err
	}
	return &App{
		cfg:      cfg,
		logger:   logger,
		identity: identity,
		registry: registry,
		backend:  instrumented,
		runner:   runner,
		rotator:  rotator,
		expiry:   tracker,
		announce: ann,
		jwtKeys:  jwtKeys,
		api: grpcapi.New(grpcapi.Config{Backend: instrumented, Logger: logger, Rotator: rotator,
			Announce: apiAnnounce, Revocations: revocations, JWTKeys: jwtKeys, JWTMetrics: jwtMetrics}),
	}, nil
}

// Run serves the KMS API and the admin endpoint until ctx ends or one of them fails.
func (a *App) Run(ctx context.Context) error {
	lis, err := lifecycle.Listen(a.logger, "grpc", a.cfg.Listen)
	if err != nil {
		return err
	}
	hs := health.NewServer()
	srv := a.api.GRPCServer(a.identity.ServerCredentials(), hs)
	g, ctx := errgroup.WithContext(ctx)
	if a.cfg.EventsEnabled() {
		if err := a.startEvents(ctx, g); err != nil {
			return err
		}
	}
	if a.rotator != nil {
		g.Go(func() error { return a.rotator.RunRotation(ctx) })
	}
	g.Go(func() error { return a.jwtKeys.Run(ctx) })
	g.Go(func() error { return lifecycle.ServeGRPC(ctx, srv, lis) })
	g.Go(func() error {
		return lifecycle.Admin{Addr: a.cfg.AdminListen, Gatherer: a.registry, Ready: a.ready, Logger: a.logger}.Run(ctx)
	})
	if a.runner != nil {
		g.Go(func() error { return a.runner.Run(ctx) })
	}
	g.Go(func() error {
		<-ctx.Done()
		hs.Shutdown() // report NOT_SERVING while in-flight calls drain
		return nil
	})
	return g.Wait()
}

// startEvents starts the embedded NATS server (unless an external one is configured), the
// publisher and the expiry tracker.
func (a *App) startEvents(ctx context.Context, g *errgroup.Group) error {
	conn := a.cfg.NATS
	if !conn.Enabled() {
		srv, err := natsserver.Start(natsserver.Config{Listen: a.cfg.NATSListen, StoreDir: a.cfg.NATSStoreDir,
			Identity: a.identity, Logger: a.logger})
		if err != nil {
			return err
		}
		g.Go(func() error { return srv.Run(ctx) })
		conn.URL = srv.URL()
	}
	nc, err := events.Connect(conn, a.identity, "kms-adapter", a.logger)
	if err != nil {
		return err
	}
	published, err := events.PublishedCounter(a.registry)
	if err != nil {
		nc.Close()
		return err
	}
	pub, err := events.NewPublisher(events.PublisherConfig{Conn: nc, TrustDomain: a.identity.TrustDomain(), Logger: a.logger,
		Published: published})
	if err != nil {
		nc.Close()
		return err
	}
	a.announce.start(pub)
	g.Go(func() error {
		defer nc.Close()
		return pub.Run(ctx)
	})
	g.Go(func() error { return a.expiry.Run(ctx) })
	return nil
}

func runnerOf(b kms.Backend) kms.Runner {
	r, _ := b.(kms.Runner)
	return r
}

// ready reports whether the backend can answer; for Vault this is where an outage shows.
func (a *App) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	_, err := a.backend.TrustBundle(ctx)
	return err
}

// logCA records which CA this process signs with: fingerprints and expiry, never key material.
func logCA(ctx context.Context, logger *slog.Logger, backend kms.Backend) error {
	bundle, err := backend.TrustBundle(ctx)
	if err != nil {
		return fmt.Errorf("reading the trust bundle: %w", err)
	}
	attrs := []any{logkey.TrustDomain, bundle.TrustDomain.String()}
	var issuers []*x509.Certificate
	if sc, ok := backend.(kms.SigningChainer); ok {
		if issuers, err = sc.SigningChain(ctx); err != nil {
			return fmt.Errorf("reading the signing chain: %w", err)
		}
	}
	if len(issuers) > 1 {
		attrs = append(attrs, logkey.IntermediateNotAfter, issuers[0].NotAfter)
	}
	for _, root := range bundle.Roots {
		sum := sha256.Sum256(root.Raw)
		logger.Info("certificate authority ready", append(attrs,
			logkey.RootFingerprint, hex.EncodeToString(sum[:]), logkey.RootNotAfter, root.NotAfter)...)
	}
	return nil
}

// Package app wires citadel together: identity, clients of kms-adapter and mcp-sync, the issuer,
// the trust bundle source, the gRPC server and the admin endpoint.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/config"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/grpcapi"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/issuer"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/jwtbundle"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/revocations"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/rotationevents"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/trustbundle"
)

// App is a configured citadel.
type App struct {
	cfg     config.Config
	logger  *slog.Logger
	conns   []*grpc.ClientConn
	pods    *mcpclient.Pods
	mcpConn *grpc.ClientConn
	bundles *trustbundle.Source
	jwt     *jwtbundle.Source
	revoked *revocations.Source
	held    chan struct{} // closed once a trust bundle is held
	grpc    *grpc.Server
	health  *health.Server
	reg     *prometheus.Registry
	id      *servicetls.Identity
	issuer  *issuer.Issuer
	// refreshKeys keeps remotely fetched token keys fresh (a no-op for a JWKS file).
	refreshKeys func(context.Context) error
}

// New builds citadel from cfg. Nothing is served until Run.
func New(cfg config.Config, logger *slog.Logger) (*App, error) {
	id, err := servicetls.Load(cfg.TLS)
	if err != nil {
		return nil, err
	}
	clk := clock.RealClock{}
	// A verified token is remembered this long (never past its expiry), so a change of the
	// issuer's keys reaches citadel within it.
	const verifiedTokenMaxAge = 5 * time.Minute
	verifier, refreshKeys, err := cfg.TokenKeys.NewVerifier(cfg.TokenIssuer, cfg.Audiences(), clk, logger)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, logger: logger, pods: mcpclient.NewPods(), held: make(chan struct{}), reg: metrics.NewRegistry(),
		refreshKeys: refreshKeys}
	kmsConn, err := a.dial(id, cfg.KMSAddr, servicetls.KMSAdapter)
	if err != nil {
		return nil, err
	}
	if a.mcpConn, err = a.dial(id, cfg.MCPAddr, servicetls.MCPSync); err != nil {
		return nil, errors.Join(err, a.close())
	}
	m := metrics.New(a.reg)
	kms := kmsv1.NewKeyManagementServiceClient(kmsConn)
	var heldOnce sync.Once
	a.bundles = trustbundle.New(trustbundle.Config{
		KMS: kms, Refresh: cfg.BundleRefresh, Clock: clk, Logger: logger,
		OnUpdate: func(b *trustbundle.Bundle) {
			m.RootCertExpiry.Set(float64(b.EarliestExpiry.Unix()))
			heldOnce.Do(func() { close(a.held) })
		},
	})
	a.jwt = jwtbundle.New(jwtbundle.Config{TrustDomain: id.TrustDomain(), KMS: kmsv1.NewJWTServiceClient(kmsConn),
		Refresh: cfg.BundleRefresh, Clock: clk, Logger: logger,
		OnUpdate: func(b *jwtbundle.Bundle) { m.JWTBundleVersion.Set(float64(b.Version)) }})
	var iss *issuer.Issuer
	a.revoked = revocations.New(revocations.Config{KMS: kms, Refresh: cfg.BundleRefresh, Clock: clk, Logger: logger,
		OnRevoked: func(id spiffeid.ID) { iss.Forget(id) }})
	iss, err = issuer.New(issuer.Config{
		TrustDomain: id.TrustDomain(), Pods: a.pods, KMS: kms, Revocations: a.revoked, Roots: a.bundles.Roots,
		// Every renewal and retry of a pod presents the same token: check its signature once.
		Verifier:   workloadtoken.NewCachedVerifier(verifier, clk, verifiedTokenMaxAge, cfg.CacheSize),
		DefaultTTL: cfg.DefaultTTL, MaxTTL: cfg.MaxTTL, CacheSize: cfg.CacheSize,
		NodeSignRate: cfg.NodeSignRate, NodeSignBurst: cfg.NodeSignBurst,
		JWTKMS: kmsv1.NewJWTServiceClient(kmsConn), JWTDefaultTTL: cfg.JWTDefaultTTL, JWTMaxTTL: cfg.JWTMaxTTL,
		Clock: clk, Metrics: m, Logger: logger,
	})
	if err != nil {
		return nil, errors.Join(err, a.close())
	}
	a.id, a.issuer = id, iss
	a.health = health.NewServer()
	a.setServing(healthpb.HealthCheckResponse_NOT_SERVING)
	srv := grpcapi.New(grpcapi.Config{Issuer: iss, Bundles: a.bundles, JWTIssuer: iss, JWTBundles: a.jwt, Logger: logger, Metrics: m})
	a.grpc = grpcapi.NewGRPCServer(grpcapi.ServerCredentials(id, m, logger), srv, a.health)
	return a, nil
}

func (a *App) dial(id *servicetls.Identity, addr, service string) (*grpc.ClientConn, error) {
	serverID, err := servicetls.ServiceID(id.TrustDomain(), service)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(id.ClientCredentials(serverID)))
	if err != nil {
		return nil, fmt.Errorf("dialing %s at %s: %w", service, addr, err)
	}
	a.conns = append(a.conns, conn)
	return conn, nil
}

func (a *App) close() error {
	var errs []error
	for _, c := range a.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// Run serves until ctx ends or a part fails.
func (a *App) Run(ctx context.Context) error {
	defer func() { _ = a.close() }()
	lis, err := lifecycle.Listen(a.logger, "grpc", a.cfg.Listen)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return mcpclient.Watch(ctx, mcpclient.Config{
			Conn: a.mcpConn, NodeID: mcpclient.ClusterNodeID, TypeURL: mcpclient.PodTypeURL, Apply: a.pods, Logger: a.logger,
		})
	})
	g.Go(func() error { return a.bundles.Run(ctx) })
	g.Go(func() error { return a.jwt.Run(ctx) })
	g.Go(func() error { return a.revoked.Run(ctx) })
	if a.cfg.NATS.Enabled() {
		if err := a.followEvents(ctx, g); err != nil {
			return err
		}
	} else {
		a.logger.Warn("no -nats-url: rotation events are not followed; the bundle is polled every -bundle-refresh")
	}
	g.Go(func() error { return a.refreshKeys(ctx) })
	if err := a.serveAttest(ctx, g); err != nil {
		return err
	}
	g.Go(func() error { return lifecycle.ServeGRPC(ctx, a.grpc, lis) })
	g.Go(func() error {
		return lifecycle.Admin{Addr: a.cfg.AdminListen, Gatherer: a.reg, Ready: a.ready, Logger: a.logger}.Run(ctx)
	})
	g.Go(func() error { return a.reportHealth(ctx) })
	return g.Wait()
}

// followEvents acts on kms-adapter's rotation events (see rotationevents).
func (a *App) followEvents(ctx context.Context, g *errgroup.Group) error {
	h := &rotationevents.Handler{Cache: a.issuer, Bundles: a.bundles, JWTBundles: a.jwt, Revocations: a.revoked, Logger: a.logger}
	run, err := events.Follow(events.FollowConfig{Conn: a.cfg.NATS, Identity: a.id, Name: "citadel", Logger: a.logger,
		Registerer: a.reg, Handle: h.Handle})
	if err != nil {
		return err
	}
	g.Go(func() error { return run(ctx) })
	return nil
}

// ready: citadel can authorize only once it knows the pods and the revocations, and node agents
// need the roots. Not ready until the revocations are loaded, so that a load balancer sends no
// renewal to a citadel that would have to refuse it; the issuer refuses proofs until then anyway,
// since readiness does not stop a connection that was already open.
func (a *App) ready() error {
	var errs []error
	select {
	case <-a.pods.Synced():
	default:
		errs = append(errs, errors.New("pods not yet synced from mcp-sync"))
	}
	select {
	case <-a.held:
	default:
		errs = append(errs, errors.New("no trust bundle from kms-adapter yet"))
	}
	select {
	case <-a.revoked.Loaded():
	default:
		errs = append(errs, errors.New("revocation state not yet loaded from kms-adapter"))
	}
	return errors.Join(errs...)
}

// reportHealth turns gRPC health to SERVING once ready, and back to NOT_SERVING on the way out so
// that load balancers drain citadel before it stops.
func (a *App) reportHealth(ctx context.Context) error {
	for _, c := range []<-chan struct{}{a.pods.Synced(), a.held, a.revoked.Loaded()} {
		select {
		case <-ctx.Done():
			a.health.Shutdown()
			return nil
		case <-c:
		}
	}
	a.setServing(healthpb.HealthCheckResponse_SERVING)
	a.logger.Info("ready")
	<-ctx.Done()
	a.health.Shutdown()
	return nil
}

func (a *App) setServing(st healthpb.HealthCheckResponse_ServingStatus) {
	for _, svc := range []string{"", authv1.IstioCertificateService_ServiceDesc.ServiceName, cav1.TrustBundleService_ServiceDesc.ServiceName,
		cav1.JWTSVIDService_ServiceDesc.ServiceName} {
		a.health.SetServingStatus(svc, st)
	}
}

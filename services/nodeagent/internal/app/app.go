// Package app wires the node agent together: mcp-sync's pod view, the token verifier, the
// certificate manager, citadel's client and the SDS server on the Unix socket.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/citadelclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/config"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/gatewaycerts"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/keysecrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/rotationevents"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sdslimits"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/workloadapi"
)

// A verified token is remembered this long (never past its expiry), so a change of the issuer's
// keys reaches the agent within it; the cache holds far more entries than a node has pods.
const (
	verifiedTokenMaxAge    = 5 * time.Minute
	verifiedTokenCacheSize = 10000
)

// App is a configured node agent.
type App struct {
	cfg      config.Config
	logger   *slog.Logger
	reg      *prometheus.Registry
	id       *servicetls.Identity
	verifier workloadtoken.TokenVerifier
	// refreshKeys keeps remotely fetched token keys fresh (a no-op for a JWKS file).
	refreshKeys func(context.Context) error
	attributes  workloadapi.AttributesConfig
}

// New loads the agent's credentials and checks them; nothing is started.
func New(cfg config.Config, logger *slog.Logger) (*App, error) {
	id, err := loadIdentity(cfg) // nil with -attest-addr: Run obtains it
	if err != nil {
		return nil, err
	}
	verifier, refreshKeys, err := cfg.TokenKeys.NewVerifier(cfg.TokenIssuer, cfg.Audiences(), nil, logger)
	if err != nil {
		return nil, err
	}
	attributes, err := workloadapi.LoadAttributesFile(cfg.WorkloadAPI.AttributesFile)
	if err != nil {
		return nil, err
	}
	// Checked now, for a clear exit on a bad file; compiled again once the trust domain is known.
	if _, err := workloadapi.NewAttributes(attributes, spiffeid.TrustDomain{}, workloadapi.NewNamespaces()); err != nil {
		return nil, fmt.Errorf("-attributes-file: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &App{cfg: cfg, logger: logger, reg: reg, id: id, verifier: verifier, refreshKeys: refreshKeys, attributes: attributes}, nil
}

// Run serves until ctx ends or a part fails. The admin endpoint comes first, so that an agent that
// is still attesting answers probes (not ready) instead of refusing them.
func (a *App) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	var ready readiness
	g.Go(func() error {
		return lifecycle.Admin{Addr: a.cfg.AdminListen, Gatherer: a.reg, Ready: ready.check, Logger: a.logger}.Run(ctx)
	})
	// The CSI driver needs no identity: pods mount their sockets while the agent attests.
	csiPlugin, err := a.startCSI(ctx, g)
	if err != nil {
		return err
	}
	g.Go(func() error {
		if err := a.obtainIdentity(ctx, g); err != nil {
			return err
		}
		return a.serve(ctx, g, &ready, csiPlugin)
	})
	return g.Wait()
}

// serve starts the agent's parts in g and returns when ctx ends.
func (a *App) serve(ctx context.Context, g *errgroup.Group, readyCheck *readiness, csiPlugin *csiPlugin) error {
	td := a.id.TrustDomain()
	citadelID, err := servicetls.ServiceID(td, servicetls.Citadel)
	if err != nil {
		return err
	}
	mcpID, err := servicetls.ServiceID(td, servicetls.MCPSync)
	if err != nil {
		return err
	}
	citadelConn, err := grpc.NewClient(a.cfg.CitadelAddr, grpc.WithTransportCredentials(a.id.ClientCredentials(citadelID)))
	if err != nil {
		return fmt.Errorf("dialing citadel: %w", err)
	}
	defer citadelConn.Close()
	mcpConn, err := grpc.NewClient(a.cfg.MCPAddr, grpc.WithTransportCredentials(a.id.ClientCredentials(mcpID)))
	if err != nil {
		return fmt.Errorf("dialing mcp-sync: %w", err)
	}
	defer mcpConn.Close()

	m := metrics.New(a.reg)
	pods := mcpclient.NewPods()
	// KeySecrets live in memory only: never in the state store, never logged (keysecrets).
	keyView := mcpclient.NewKeySecrets()
	keyStore := keysecrets.New(keysecrets.Config{KeySecrets: keyView, Pods: pods, MaxBytes: a.cfg.KeySecretMaxBytes})
	keyType, _ := secrets.ParseKeyType(a.cfg.KeyType) // validated in config
	citadel := citadelclient.New(citadelConn)
	store, err := a.openStore()
	if err != nil {
		return err
	}
	scfg := secrets.Config{
		Signer: citadel, Bundles: citadel, Clock: clock.RealClock{}, Logger: a.logger, Observe: m, Rotations: m,
		TTL: a.cfg.CertTTL, KeyType: keyType, Jitter: a.cfg.RenewJitter, Refresh: a.cfg.BundleRefresh,
		RestoreGrace: a.cfg.State.RestoreGrace,
	}
	if store != nil {
		defer store.Close()
		scfg.Store = store
	}
	manager := secrets.New(scfg)
	peer := csiPlugin.peer(peerOf)
	limits, err := sdslimits.New(sdslimits.Config{
		FirstRequestTimeout: a.cfg.SDS.FirstRequestTimeout, MaxUnauthenticated: a.cfg.SDS.MaxUnauthenticated,
		MaxStreamsPerConn: a.cfg.SDS.MaxStreamsPerConn, MaxStreamsPerCaller: a.cfg.SDS.MaxStreamsPerPod,
		Observer: m, Logger: a.logger,
	})
	if err != nil {
		return err
	}
	auth := &identity.Authenticator{
		// Each SDS stream of a pod presents the same token: check its signature once.
		Verifier: workloadtoken.NewCachedVerifier(a.verifier, nil, verifiedTokenMaxAge, verifiedTokenCacheSize),
		Pods:     pods, NodeName: a.cfg.NodeName, TrustDomain: td, Mode: identity.Mode(a.cfg.WorkloadAttestation), Logger: a.logger,
	}
	wapi, err := a.newWorkloadAPI(ctx, g, td, auth, manager, citadel, mcpConn, peer, limits)
	if err != nil {
		return err
	}
	gateways := gatewaycerts.New(a.logger)
	sdsServer := sds.New(sds.Config{
		Auth: auth, Gateways: gateways,
		Secrets: manager, Logger: a.logger, Observe: m, Callers: limits,
		PeerIdentifies: identity.Mode(a.cfg.WorkloadAttestation) != identity.ModeToken,
		ResumeAfter:    a.cfg.SDS.ResumeAfter, Remembered: manager, Started: sdslimits.Started, Peer: peer,
		KeySecrets: keyStore,
	})
	lis, err := a.listenSocket()
	if err != nil {
		return err
	}
	srv := grpc.NewServer(append(limits.ServerOptions(), a.peerOptions()...)...)
	secretv3.RegisterSecretDiscoveryServiceServer(srv, sdsServer)
	wapi.server.Register(srv) // the SPIFFE Workload API, on the same sockets and with the same callers
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(srv, healthSrv)
	var serving atomic.Bool
	ready := func() error {
		select {
		case <-pods.Synced():
		default:
			return errors.New("no pod list from mcp-sync yet")
		}
		if !serving.Load() {
			return errors.New("restoring the certificates kept across the restart")
		}
		if _, err := manager.Roots(ctx); err != nil {
			return err
		}
		return csiPlugin.ready()
	}
	readyCheck.set(ready)
	g.Go(func() error {
		return mcpclient.Watch(ctx, mcpclient.Config{
			Conn: mcpConn, NodeID: a.cfg.NodeName, TypeURL: mcpclient.PodTypeURL, Apply: pods, Logger: a.logger,
		})
	})
	g.Go(func() error {
		// The gateway certificates (opted-in TLS Secrets) that pods on this node may read.
		return mcpclient.Watch(ctx, mcpclient.Config{
			Conn: mcpConn, NodeID: a.cfg.NodeName, TypeURL: mcpclient.GatewayCertificateTypeURL, Apply: gateways, Logger: a.logger,
		})
	})
	g.Go(func() error { return manager.Run(ctx) })
	httpSrv := a.httpServer(wapi)
	g.Go(func() error { return a.serveHTTP(ctx, httpSrv) })
	g.Go(func() error {
		return mcpclient.Watch(ctx, mcpclient.Config{
			Conn: mcpConn, NodeID: a.cfg.NodeName, TypeURL: mcpclient.KeySecretTypeURL, Apply: keyView, Logger: a.logger,
		})
	})
	if a.cfg.NATS.Enabled() {
		if err := a.followEvents(ctx, g, manager, wapi.bundles); err != nil {
			return err
		}
	} else {
		a.logger.Warn("no -nats-url: rotation events are not followed; the bundle is polled every -bundle-refresh and certificates renew on their timers")
	}
	g.Go(func() error { return a.refreshKeys(ctx) })
	g.Go(func() error {
		if store != nil {
			// Connections wait in the socket's backlog meanwhile: a sidecar that reconnects is
			// answered from what the agent held, with no CSR and no call to the CA.
			restore(ctx, manager, pods, a.cfg.NodeName, a.logger)
		}
		csiPlugin.serve(srv, httpSrv) // a caller on a pod's own socket is that pod: csiPlugin.peer
		serving.Store(true)
		return lifecycle.ServeGRPC(ctx, srv, lis)
	})
	a.logger.Info("node agent started", "node", a.cfg.NodeName, "spiffe_id", a.id.ID().String(), "socket", a.cfg.Socket)
	<-ctx.Done() // the connections closed by the defers above live as long as the agent
	return nil
}

// followEvents acts on kms-adapter's rotation events (see rotationevents).
func (a *App) followEvents(ctx context.Context, g *errgroup.Group, manager *secrets.Manager, jwtBundles rotationevents.JWTBundles) error {
	h := &rotationevents.Handler{Secrets: manager, JWTBundles: jwtBundles, Logger: a.logger, BundleJitter: a.cfg.BundleJitter, RotateJitter: a.cfg.RotateJitter}
	run, err := events.Follow(events.FollowConfig{Conn: a.cfg.NATS, Identity: a.id, Name: "nodeagent/" + a.cfg.NodeName, Logger: a.logger,
		Registerer: a.reg, Handle: h.Handle})
	if err != nil {
		return err
	}
	g.Go(func() error { return run(ctx) })
	return nil
}

// listenSocket opens the SDS socket (see listenUnix).
func (a *App) listenSocket() (net.Listener, error) { return a.listenUnix(a.cfg.Socket, "sds") }

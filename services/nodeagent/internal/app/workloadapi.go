package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/citadelclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/peercred"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/unixsock"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/workloadapi"
)

// workloadAPI is the SPIFFE Workload API as the agent serves it: its gRPC side on the agent's
// gRPC server (the SDS socket and every per-pod socket), its HTTP side on a socket of its own.
type workloadAPI struct {
	server  *workloadapi.Server
	bundles *workloadapi.JWTBundles
}

// newWorkloadAPI builds the Workload API on the agent's certificate store and citadel, and
// starts in g what keeps it fresh: the JWT bundle poll and, if the attribute rules take namespace
// labels, mcp-sync's namespace view.
func (a *App) newWorkloadAPI(ctx context.Context, g *errgroup.Group, td spiffeid.TrustDomain, auth *identity.Authenticator,
	manager *secrets.Manager, citadel *citadelclient.Client, mcpConn grpc.ClientConnInterface, peer func(context.Context) identity.Peer,
	callers workloadapi.CallerLimiter,
) (*workloadAPI, error) {
	namespaces := workloadapi.NewNamespaces()
	attrs, err := workloadapi.NewAttributes(a.attributes, td, namespaces)
	if err != nil {
		return nil, fmt.Errorf("-attributes-file: %w", err)
	}
	if usesNamespaceLabels(a.attributes) {
		g.Go(func() error {
			return mcpclient.Watch(ctx, mcpclient.Config{
				Conn: mcpConn, NodeID: a.cfg.NodeName, TypeURL: mcpclient.NamespaceTypeURL, Apply: namespaces, Logger: a.logger,
			})
		})
	}
	bundles := workloadapi.NewJWTBundles(citadel, td, a.cfg.BundleRefresh, a.logger)
	g.Go(func() error { return bundles.Run(ctx) })
	srv := workloadapi.New(workloadapi.Config{
		Auth: auth, Secrets: manager, Bundles: bundles, Attributes: attrs, TrustDomain: td, Peer: peer, Logger: a.logger,
		Observe: metrics.NewWorkloadAPI(a.reg), Callers: callers,
		JWTs: workloadapi.NewJWTSVIDs(workloadapi.JWTSVIDsConfig{Minter: citadel, Clock: clock.RealClock{}, Logger: a.logger}),
	})
	return &workloadAPI{server: srv, bundles: bundles}, nil
}

func usesNamespaceLabels(cfg workloadapi.AttributesConfig) bool {
	for _, r := range cfg.Rules {
		if len(r.NamespaceLabels) > 0 {
			return true
		}
	}
	return false
}

// httpServer is the HTTP API's server, nil with -http-socket=-. Callers are identified as on the
// gRPC sockets: peercred.ConnContext puts each connection (its local address, and its peer
// credentials unless attestation is by token alone) in the requests' contexts, where the same
// peer function finds them; a connection on a pod's HTTP socket is that pod.
func (a *App) httpServer(w *workloadAPI) *http.Server {
	if a.cfg.HTTPSocketPath() == "" {
		return nil
	}
	var resolver *peercred.Resolver
	if identity.Mode(a.cfg.WorkloadAttestation) != identity.ModeToken {
		resolver = &peercred.Resolver{ProcRoot: a.cfg.ProcRoot, CgroupRoot: a.cfg.CgroupRoot}
	}
	return &http.Server{
		Handler: w.server.HTTPHandler(), ConnContext: peercred.ConnContext(resolver),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
	}
}

// serveHTTP serves srv on -http-socket until ctx ends, then stops it (and with it the pods' HTTP
// sockets).
func (a *App) serveHTTP(ctx context.Context, srv *http.Server) error {
	if srv == nil {
		return nil
	}
	lis, err := a.listenUnix(a.cfg.HTTPSocketPath(), "workload-api-http")
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("workload api http: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// listenUnix opens a Unix socket at path with -socket-mode, replacing a stale socket left by a
// previous run (but never any other kind of file).
func (a *App) listenUnix(path, name string) (net.Listener, error) {
	mode, _ := a.cfg.Mode() // validated in config
	lis, err := unixsock.Listen(path, mode)
	if err != nil {
		return nil, err
	}
	a.logger.Info(lifecycle.ListeningMsg, "listener", name, "addr", path)
	return lis, nil
}

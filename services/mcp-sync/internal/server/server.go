// Package server is mcp-sync's gRPC edge: MCP over xDS (ADS, state of the world and delta) with
// mTLS, and per-stream authorization of the node ID a client subscribes as.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/xdslog"
)

// Nodes is told which node each stream subscribes as, so that a node's view exists while it has
// streams. Acquire is called once per stream, before the stream's first watch; Release once per
// Acquire, after the stream's watches are cancelled. Implementations must be safe for concurrent
// use. snapshot.Manager implements it.
type Nodes interface {
	Acquire(node string)
	Release(node string)
}

// Config configures a Server.
type Config struct {
	Identity *servicetls.Identity
	Cache    cache.Cache
	Nodes    Nodes
	Logger   *slog.Logger
	Metrics  *metrics.Metrics
}

// Server serves MCP over xDS. Create it with New; Serve it once.
type Server struct {
	grpc   *grpc.Server
	health *health.Server
	// stopStreams ends every xDS stream: GracefulStop waits for streams, and an xDS stream never
	// ends by itself.
	stopStreams context.CancelFunc
}

// New builds the server; it is not serving yet and reports NOT_SERVING on gRPC health until
// SetReady.
func New(cfg Config) (*Server, error) {
	if cfg.Identity == nil || cfg.Cache == nil || cfg.Nodes == nil || cfg.Logger == nil || cfg.Metrics == nil {
		return nil, errors.New("server needs an identity, a cache, nodes, a logger and metrics")
	}
	opts := append([]grpc.ServerOption{grpc.Creds(cfg.Identity.ServerCredentials())},
		servicetls.Interceptors(authorizePeer, healthpb.Health_Check_FullMethodName, healthpb.Health_Watch_FullMethodName)...)
	g := grpc.NewServer(opts...)

	streamsCtx, stop := context.WithCancel(context.Background())
	cb := &callbacks{
		nodes:   cfg.Nodes,
		logger:  cfg.Logger,
		metrics: cfg.Metrics,
		streams: map[streamKey]*streamState{},
	}
	discovery.RegisterAggregatedDiscoveryServiceServer(g,
		xds.NewServer(streamsCtx, cfg.Cache, cb, sotw.WithLogger(xdslog.New(cfg.Logger))))

	h := health.NewServer()
	h.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(g, h)
	return &Server{grpc: g, health: h, stopStreams: stop}, nil
}

// SetReady makes gRPC health report SERVING.
func (s *Server) SetReady() { s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING) }

// Serve serves on lis until ctx ends, then ends every stream and stops.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	defer context.AfterFunc(ctx, func() {
		s.health.Shutdown()
		s.stopStreams()
	})()
	defer s.stopStreams()
	return lifecycle.ServeGRPC(ctx, s.grpc, lis)
}

// authorizePeer admits citadel and node agents at the gRPC layer; which node ID each may
// subscribe as is checked per stream (see callbacks).
func authorizePeer(_ context.Context, id spiffeid.ID, _ string) error {
	if _, err := allowedNodeID(id); err != nil {
		return err
	}
	return nil
}

// allowedNodeID is the only node ID a peer may subscribe as: citadel sees the whole cluster, a
// node agent only its own node.
func allowedNodeID(id spiffeid.ID) (string, error) {
	if servicetls.IsService(id, servicetls.Citadel) {
		return clusterNodeID, nil
	}
	if node, ok := servicetls.NodeOf(id); ok {
		return node, nil
	}
	return "", errors.New("only citadel and node agents may subscribe to mcp-sync")
}

type streamKey struct {
	delta bool // sotw and delta streams are numbered independently
	id    int64
}

type streamState struct {
	peer    spiffeid.ID
	allowed string // the node ID this peer may use
	node    string // the node ID acquired, "" before the first request
}

// callbacks authorize each request's node ID and tell Nodes which nodes have streams.
type callbacks struct {
	xds.CallbackFuncs // no-ops for the callbacks not overridden below

	nodes   Nodes
	logger  *slog.Logger
	metrics *metrics.Metrics

	mu      sync.Mutex
	streams map[streamKey]*streamState
}

func (c *callbacks) open(ctx context.Context, key streamKey) error {
	c.metrics.Streams.Inc()
	id, err := servicetls.PeerID(ctx)
	if err != nil {
		return unauthenticated(err)
	}
	allowed, err := allowedNodeID(id)
	if err != nil {
		return permissionDenied(fmt.Sprintf("%s: %v", servicetls.Describe(id), err))
	}
	c.mu.Lock()
	c.streams[key] = &streamState{peer: id, allowed: allowed}
	c.mu.Unlock()
	return nil
}

func (c *callbacks) request(key streamKey, nodeID string, hasNode bool, typeURL string) error {
	c.mu.Lock()
	st := c.streams[key]
	c.mu.Unlock()
	if st == nil {
		return unauthenticated(errors.New("stream was not authorized when it opened"))
	}
	// A delta stream may send the node only in its first request.
	if !hasNode && st.node != "" {
		nodeID = st.node
	}
	if nodeID != st.allowed {
		c.logger.Warn("refusing mcp subscription", "peer", st.peer.String(), "node_id", nodeID, "allowed_node_id", st.allowed)
		return permissionDenied(fmt.Sprintf("%s may only subscribe as node %q, not %q", servicetls.Describe(st.peer), st.allowed, nodeID))
	}
	if !servedType(typeURL) {
		return invalidArgument(fmt.Sprintf("type URL %q is not served by mcp-sync", typeURL))
	}
	if st.node == "" {
		st.node = nodeID
		c.nodes.Acquire(nodeID)
		c.logger.Debug("mcp stream subscribed", "peer", st.peer.String(), "node_id", nodeID, "type_url", typeURL)
	}
	return nil
}

func (c *callbacks) closed(key streamKey) {
	c.metrics.Streams.Dec()
	c.mu.Lock()
	st := c.streams[key]
	delete(c.streams, key)
	c.mu.Unlock()
	if st != nil && st.node != "" {
		c.nodes.Release(st.node)
	}
}

// OnStreamOpen implements xds.Callbacks.
func (c *callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, streamKey{id: id})
}

// OnStreamRequest implements xds.Callbacks.
func (c *callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	// The sotw server fills in the node of the stream's first request when a later one has none.
	return c.request(streamKey{id: id}, req.GetNode().GetId(), true, req.GetTypeUrl())
}

// OnStreamClosed implements xds.Callbacks.
func (c *callbacks) OnStreamClosed(id int64, _ *core.Node) { c.closed(streamKey{id: id}) }

// OnDeltaStreamOpen implements xds.Callbacks.
func (c *callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, streamKey{delta: true, id: id})
}

// OnStreamDeltaRequest implements xds.Callbacks.
func (c *callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	return c.request(streamKey{delta: true, id: id}, req.GetNode().GetId(), req.GetNode() != nil, req.GetTypeUrl())
}

// OnDeltaStreamClosed implements xds.Callbacks.
func (c *callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) {
	c.closed(streamKey{delta: true, id: id})
}

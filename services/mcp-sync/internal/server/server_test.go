package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/snapshot"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 10 * time.Second

var td = spiffeid.RequireTrustDomainFromString("portcullis.test")

type env struct {
	t        *testing.T
	ca       *servicetls.BootstrapCA
	dir      string
	addr     string
	serverID spiffeid.ID
	snaps    *snapshot.Manager
	srv      *Server
	metrics  *metrics.Metrics
	logger   *slog.Logger
}

// newEnv serves mcp-sync over mTLS on 127.0.0.1:0 with the given first state (none if nil).
func newEnv(t *testing.T, first *inventory.State) *env {
	t.Helper()
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ca: ca, dir: t.TempDir(), logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	e.serverID, _ = servicetls.ServiceID(td, servicetls.MCPSync)
	files, err := ca.Issue(e.dir, "mcp-sync", e.serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, err := servicetls.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	e.metrics = metrics.New(prometheus.NewRegistry())
	e.snaps, err = snapshot.New(snapshot.Config{Logger: e.logger, Metrics: e.metrics})
	if err != nil {
		t.Fatal(err)
	}
	if first != nil {
		e.update(*first)
	}
	srv, err := New(Config{Identity: id, Cache: e.snaps.Cache(), Nodes: e.snaps, Logger: e.logger, Metrics: e.metrics})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

func (e *env) update(st inventory.State) {
	e.t.Helper()
	if err := e.snaps.Update(st); err != nil {
		e.t.Fatal(err)
	}
}

// dial connects with a fresh certificate for id.
func (e *env) dial(name string, id spiffeid.ID) *grpc.ClientConn {
	e.t.Helper()
	files, err := e.ca.Issue(e.dir, name, id, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	ident, err := servicetls.Load(files)
	if err != nil {
		e.t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(ident.ClientCredentials(e.serverID)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func (e *env) dialNodeAgent(node string) *grpc.ClientConn {
	id, err := servicetls.NodeAgentID(td, node)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.dial("nodeagent-"+node, id)
}

func (e *env) dialService(name string) *grpc.ClientConn {
	id, err := servicetls.ServiceID(td, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.dial(name, id)
}

// watchPods runs the real mcpclient against the server, like a node agent or citadel does.
func (e *env) watchPods(conn *grpc.ClientConn, nodeID string) (*mcpclient.Pods, *atomic.Int32) {
	e.t.Helper()
	pods := mcpclient.NewPods()
	var changes atomic.Int32
	pods.OnChange(func() { changes.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- mcpclient.Watch(ctx, mcpclient.Config{Conn: conn, NodeID: nodeID, TypeURL: mcpclient.PodTypeURL, Apply: pods, Logger: e.logger})
	}()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Watch: %v", err)
		}
	})
	return pods, &changes
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not waiting for timing
	}
}

func pod(ns, name, node string) *mcpv1.Pod {
	return &mcpv1.Pod{Name: ns + "/" + name, Namespace: ns, PodName: name, NodeName: node, ServiceAccount: "default", Uid: "uid-" + name}
}

func cluster(extra ...*mcpv1.Pod) inventory.State {
	pods := append([]*mcpv1.Pod{
		pod("payments", "ledger-0", "node-b"),
		pod("shop", "cart-0", "node-a"),
		pod("shop", "frontend-0", "node-a"),
		pod("shop", "frontend-1", "node-b"),
	}, extra...)
	return inventory.State{
		Pods:       pods,
		Namespaces: []*mcpv1.Namespace{{Name: "payments"}, {Name: "shop"}},
	}
}

func hasExactly(p *mcpclient.Pods, keys ...string) bool {
	if p.Len() != len(keys) {
		return false
	}
	for _, k := range keys {
		if _, ok := p.Get(k); !ok {
			return false
		}
	}
	return true
}

func TestEachClientSeesItsShare(t *testing.T) {
	st := cluster()
	e := newEnv(t, &st)
	podsA, _ := e.watchPods(e.dialNodeAgent("node-a"), "node-a")
	podsB, changesB := e.watchPods(e.dialNodeAgent("node-b"), "node-b")
	all, _ := e.watchPods(e.dialService(servicetls.Citadel), mcpclient.ClusterNodeID)

	waitUntil(t, "node-a's pods", func() bool { return hasExactly(podsA, "shop/cart-0", "shop/frontend-0") })
	waitUntil(t, "node-b's pods", func() bool { return hasExactly(podsB, "payments/ledger-0", "shop/frontend-1") })
	waitUntil(t, "every pod for citadel", func() bool {
		return hasExactly(all, "payments/ledger-0", "shop/cart-0", "shop/frontend-0", "shop/frontend-1")
	})
	if got := testutil.ToFloat64(e.metrics.Streams); got != 3 {
		t.Errorf("streams gauge = %v, want 3", got)
	}

	// A pod added on node-a reaches node-a's agent and citadel, and nothing is pushed to node-b.
	before := changesB.Load()
	e.update(cluster(pod("shop", "cart-1", "node-a")))
	waitUntil(t, "the new pod on node-a", func() bool {
		return hasExactly(podsA, "shop/cart-0", "shop/cart-1", "shop/frontend-0")
	})
	waitUntil(t, "the new pod for citadel", func() bool { return all.Len() == 5 })
	if got := changesB.Load(); got != before {
		t.Errorf("node-b received %d updates for a change on node-a", got-before)
	}
	if got, _ := podsA.Get("shop/cart-1"); got.GetUid() != "uid-cart-1" || got.GetNodeName() != "node-a" {
		t.Errorf("node-a got %v", got)
	}

	// The last pod leaving node-b reaches node-b's agent as an empty set.
	e.update(inventory.State{Pods: []*mcpv1.Pod{pod("shop", "cart-0", "node-a")}})
	waitUntil(t, "node-b's empty set", func() bool { return podsB.Len() == 0 })
}

func TestNodeWithoutPodsGetsAnEmptySet(t *testing.T) {
	st := cluster()
	e := newEnv(t, &st)
	pods, _ := e.watchPods(e.dialNodeAgent("node-c"), "node-c")
	select {
	case <-pods.Synced():
	case <-time.After(waitTimeout):
		t.Fatal("node-c got no response")
	}
	if pods.Len() != 0 {
		t.Errorf("node-c has %d pods, want 0", pods.Len())
	}
	e.update(cluster(pod("shop", "new-0", "node-c")))
	waitUntil(t, "node-c's first pod", func() bool { return hasExactly(pods, "shop/new-0") })
}

func TestNothingIsServedBeforeTheFirstState(t *testing.T) {
	e := newEnv(t, nil)
	pods, _ := e.watchPods(e.dialNodeAgent("node-a"), "node-a")
	// The stream is open and waiting once the gauge counts it.
	waitUntil(t, "the stream", func() bool { return testutil.ToFloat64(e.metrics.Streams) == 1 })
	select {
	case <-pods.Synced():
		t.Fatal("node-a got a state before the source loaded")
	default:
	}
	e.update(cluster())
	waitUntil(t, "node-a's pods", func() bool { return hasExactly(pods, "shop/cart-0", "shop/frontend-0") })
}

// fetchErr opens a raw state-of-the-world ADS stream and returns the stream's error.
func fetchErr(t *testing.T, conn *grpc.ClientConn, nodeID, typeURL string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c := sotw.NewADSClient(ctx, &core.Node{Id: nodeID}, typeURL)
	if err := c.InitConnect(conn); err != nil {
		return err
	}
	_, err := c.Fetch()
	return err
}

func wantStatus(t *testing.T, err error, code codes.Code, mentions ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error = %v, want code %s", err, code)
	}
	for _, m := range mentions {
		if !strings.Contains(status.Convert(err).Message(), m) {
			t.Errorf("message %q does not mention %q", status.Convert(err).Message(), m)
		}
	}
}

func TestSubscribingAsAnotherNodeIsRefused(t *testing.T) {
	st := cluster()
	e := newEnv(t, &st)
	nodeA := e.dialNodeAgent("node-a")
	citadel := e.dialService(servicetls.Citadel)

	wantStatus(t, fetchErr(t, nodeA, "node-b", mcpclient.PodTypeURL), codes.PermissionDenied,
		"spiffe://portcullis.test/portcullis/nodeagent/node-a", `"node-a"`, `"node-b"`)
	wantStatus(t, fetchErr(t, nodeA, mcpclient.ClusterNodeID, mcpclient.PodTypeURL), codes.PermissionDenied, `"*"`)
	wantStatus(t, fetchErr(t, citadel, "node-a", mcpclient.PodTypeURL), codes.PermissionDenied,
		"portcullis/citadel", `"node-a"`)
	wantStatus(t, fetchErr(t, e.dialService(servicetls.KMSAdapter), mcpclient.ClusterNodeID, mcpclient.PodTypeURL),
		codes.PermissionDenied, "kms-adapter")
	wantStatus(t, fetchErr(t, nodeA, "node-a", "type.googleapis.com/google.protobuf.Empty"), codes.InvalidArgument, "not served")

	// The same connection still works for its own node.
	pods, _ := e.watchPods(nodeA, "node-a")
	waitUntil(t, "node-a's pods", func() bool { return pods.Len() == 2 })
	// Refused streams leave no state behind.
	waitUntil(t, "the refused streams to be gone", func() bool { return testutil.ToFloat64(e.metrics.Streams) == 1 })
}

func TestDeltaStreamsAreAuthorizedToo(t *testing.T) {
	st := cluster()
	e := newEnv(t, &st)
	client := discovery.NewAggregatedDiscoveryServiceClient(e.dialNodeAgent("node-a"))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	ok, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ok.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "node-a"}, TypeUrl: mcpclient.PodTypeURL}); err != nil {
		t.Fatal(err)
	}
	resp, err := ok.Recv()
	if err != nil {
		t.Fatalf("delta Recv: %v", err)
	}
	var got []string
	for _, r := range resp.GetResources() {
		got = append(got, r.GetName())
	}
	if len(got) != 2 {
		t.Errorf("delta resources for node-a = %v, want its 2 pods", got)
	}
	_ = ok.CloseSend()

	bad, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "node-b"}, TypeUrl: mcpclient.PodTypeURL}); err != nil {
		t.Fatal(err)
	}
	_, err = bad.Recv()
	wantStatus(t, err, codes.PermissionDenied, `"node-b"`)
}

func TestHealthIsOpenAndFollowsReadiness(t *testing.T) {
	e := newEnv(t, nil)
	// Any verified peer may check health, even one that may not subscribe.
	h := healthpb.NewHealthClient(e.dialService(servicetls.KMSAdapter))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health before ready = %v, want NOT_SERVING", resp.GetStatus())
	}
	e.srv.SetReady()
	resp, err = h.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health when ready = %v, want SERVING", resp.GetStatus())
	}
}

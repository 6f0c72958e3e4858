package mcpclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotwserver "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 10 * time.Second

var td = spiffeid.RequireTrustDomainFromString("portcullis.test")

// podSnapshot is a minimal cache.ResourceSnapshot serving pods, standing in for mcp-sync.
type podSnapshot struct {
	version string
	pods    map[string]types.Resource
}

func newPodSnapshot(pods ...*mcpv1.Pod) *podSnapshot {
	s := &podSnapshot{pods: map[string]types.Resource{}}
	h := sha256.New()
	for _, p := range pods {
		s.pods[p.GetName()] = p
		b, _ := proto.Marshal(p)
		h.Write(b)
	}
	s.version = hex.EncodeToString(h.Sum(nil)[:8])
	return s
}

func (s *podSnapshot) GetVersion(typeURL string) string {
	if typeURL != mcpclient.PodTypeURL {
		return ""
	}
	return s.version
}

func (s *podSnapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	out := map[string]types.ResourceWithTTL{}
	for name, r := range s.GetResources(typeURL) {
		out[name] = types.ResourceWithTTL{Resource: r}
	}
	return out
}

func (s *podSnapshot) GetResources(typeURL string) map[string]types.Resource {
	if typeURL != mcpclient.PodTypeURL {
		return nil
	}
	return s.pods
}

func (s *podSnapshot) ConstructVersionMap() error             { return nil }
func (s *podSnapshot) GetVersionMap(string) map[string]string { return nil }

type ads struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	sotw sotwserver.Server
}

func (a ads) StreamAggregatedResources(s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamHandler(s, "") // "" is the ADS type URL
}

type pki struct {
	ca       *servicetls.BootstrapCA
	dir      string
	serverID spiffeid.ID
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := servicetls.ServiceID(td, servicetls.MCPSync)
	return &pki{ca: ca, dir: t.TempDir(), serverID: id}
}

func (p *pki) identity(t *testing.T, name string, id spiffeid.ID) *servicetls.Identity {
	t.Helper()
	files, err := p.ca.Issue(p.dir, name, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident, err := servicetls.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	return ident
}

// serve runs an ADS server over mTLS on lis serving snap to every node; stop ends it.
func (p *pki) serve(t *testing.T, lis net.Listener, snap cache.ResourceSnapshot) (stop func()) {
	t.Helper()
	c := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	if err := c.SetSnapshot(context.Background(), "node-a", snap); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := grpc.NewServer(grpc.Creds(p.identity(t, "mcp-sync", p.serverID).ServerCredentials()))
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, ads{sotw: sotwserver.NewServer(ctx, c, nil)})
	done := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			srv.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

func pod(name string) *mcpv1.Pod {
	return &mcpv1.Pod{Name: "shop/" + name, Namespace: "shop", PodName: name, NodeName: "node-a"}
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

func TestWatchReconnectsAndKeepsTheLastStateMeanwhile(t *testing.T) {
	p := newPKI(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	stop := p.serve(t, lis, newPodSnapshot(pod("a")))

	agentID, _ := servicetls.NodeAgentID(td, "node-a")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.identity(t, "agent", agentID).ClientCredentials(p.serverID)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	logs := &syncBuffer{}
	pods := mcpclient.NewPods()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- mcpclient.Watch(ctx, mcpclient.Config{
			Conn: conn, NodeID: "node-a", TypeURL: mcpclient.PodTypeURL, Apply: pods,
			Logger: slog.New(slog.NewJSONHandler(logs, nil)), MaxBackoff: 50 * time.Millisecond,
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()

	select {
	case <-pods.Synced():
	case <-time.After(waitTimeout):
		t.Fatal("no first state")
	}
	if _, ok := pods.Get("shop/a"); !ok || pods.Len() != 1 {
		t.Fatalf("first state has %d pods, want shop/a", pods.Len())
	}

	stop()
	// Wait until the client has failed to reconnect at least once: it is really cut off.
	waitUntil(t, "a failed reconnect", func() bool { return strings.Count(logs.String(), "mcp stream broken") >= 2 })
	if _, ok := pods.Get("shop/a"); !ok || pods.Len() != 1 {
		t.Fatalf("while disconnected the view has %d pods, want the last state (shop/a)", pods.Len())
	}

	var lis2 net.Listener
	waitUntil(t, "the address to be free again", func() bool {
		lis2, err = net.Listen("tcp", addr)
		return err == nil
	})
	p.serve(t, lis2, newPodSnapshot(pod("a"), pod("b")))
	waitUntil(t, "the state from the restarted server", func() bool {
		_, okB := pods.Get("shop/b")
		return okB && pods.Len() == 2
	})
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

package mcpclient_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

type refusingADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
}

func (refusingADS) StreamAggregatedResources(discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return status.Error(codes.PermissionDenied, `"spiffe://example.org/portcullis/nodeagent/node-a" may only subscribe as node "node-a"`)
}

// A refusal cannot be fixed by reconnecting: it is logged as an error that says what to check.
func TestRefusalIsLoggedAsAnError(t *testing.T) {
	p := newPKI(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(p.identity(t, "mcp-sync", p.serverID).ServerCredentials()))
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, refusingADS{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	agentID, _ := servicetls.NodeAgentID(td, "node-a")
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(p.identity(t, "agent", agentID).ClientCredentials(p.serverID)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- mcpclient.Watch(ctx, mcpclient.Config{
			Conn: conn, NodeID: "node-b", TypeURL: mcpclient.PodTypeURL, Apply: mcpclient.NewPods(),
			Logger: slog.New(slog.NewJSONHandler(logs, nil)), MaxBackoff: 50 * time.Millisecond,
		})
	}()
	waitUntil(t, "the refusal to be logged", func() bool {
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `"level":"ERROR"`) && strings.Contains(line, "mcp-sync refuses this client") &&
				strings.Contains(line, `"node_id":"node-b"`) {
				return true
			}
		}
		return false
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch: %v", err)
	}
}

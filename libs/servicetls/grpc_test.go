package servicetls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	healthCheck = "/grpc.health.v1.Health/Check"
	healthList  = "/grpc.health.v1.Health/List"
)

// mesh is a kms-adapter-like server that admits only citadel, on real mTLS over 127.0.0.1:0.
type mesh struct {
	ca       *servicetls.BootstrapCA
	dir      string
	serverID spiffeid.ID
	addr     string

	mu    sync.Mutex
	peers map[string]spiffeid.ID // method -> PeerID seen by the handler
}

func startMesh(t *testing.T) *mesh {
	t.Helper()
	m := &mesh{ca: newCA(t), dir: t.TempDir(), serverID: serviceID(t, servicetls.KMSAdapter), peers: map[string]spiffeid.ID{}}
	ident := m.load(t, "kms", m.serverID)

	// Runs after the servicetls interceptors: it sees only calls they let through.
	record := func(ctx context.Context, method string) {
		if id, err := servicetls.PeerID(ctx); err == nil {
			m.mu.Lock()
			m.peers[method] = id
			m.mu.Unlock()
		}
	}
	opts := append([]grpc.ServerOption{grpc.Creds(ident.ServerCredentials())},
		servicetls.Interceptors(servicetls.AllowServices(servicetls.Citadel), healthCheck)...)
	opts = append(opts,
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			record(ctx, info.FullMethod)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			record(ss.Context(), info.FullMethod)
			return h(srv, ss)
		}))
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return m
}

// load issues a certificate for id from the mesh's CA and loads it.
func (m *mesh) load(t *testing.T, name string, id spiffeid.ID) *servicetls.Identity {
	t.Helper()
	ident, err := servicetls.Load(issue(t, m.ca, m.dir, name, id))
	if err != nil {
		t.Fatal(err)
	}
	return ident
}

func (m *mesh) peerSeen(method string) (spiffeid.ID, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.peers[method]
	return id, ok
}

func (m *mesh) dial(t *testing.T, creds credentials.TransportCredentials) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(m.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func requireCode(t *testing.T, what string, err error, want codes.Code) *status.Status {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != want {
		t.Fatalf("%s: got %v (%v), want %v", what, st.Code(), err, want)
	}
	return st
}

// watchFirst opens Health/Watch (a server stream) and returns the error of its first message.
func watchFirst(t *testing.T, c healthpb.HealthClient) error {
	ctx, cancel := context.WithCancel(callCtx(t))
	defer cancel()
	stream, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func TestMTLSAllowedService(t *testing.T) {
	m := startMesh(t)
	citadelID := serviceID(t, servicetls.Citadel)
	c := m.dial(t, m.load(t, "citadel", citadelID).ClientCredentials(m.serverID))

	if _, err := c.List(callCtx(t), &healthpb.HealthListRequest{}); err != nil {
		t.Fatalf("citadel List: %v", err)
	}
	if err := watchFirst(t, c); err != nil {
		t.Fatalf("citadel Watch: %v", err)
	}
	if id, ok := m.peerSeen(healthList); !ok || id != citadelID {
		t.Errorf("handler saw PeerID %v (%v), want %s", id, ok, citadelID)
	}
}

func TestMTLSOtherServiceDenied(t *testing.T) {
	m := startMesh(t)
	for name, id := range map[string]spiffeid.ID{
		"mcp-sync":  serviceID(t, servicetls.MCPSync),
		"nodeagent": mustNodeAgent(t, "node-1"),
	} {
		t.Run(name, func(t *testing.T) {
			c := m.dial(t, m.load(t, name, id).ClientCredentials(m.serverID))
			_, err := c.List(callCtx(t), &healthpb.HealthListRequest{})
			st := requireCode(t, "List", err, codes.PermissionDenied)
			if !strings.Contains(st.Message(), id.String()) {
				t.Errorf("PermissionDenied message %q does not name the caller %s", st.Message(), id)
			}
			requireCode(t, "Watch", watchFirst(t, c), codes.PermissionDenied)
			// The open method stays open to authenticated callers too.
			if _, err := c.Check(callCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
				t.Errorf("Check: %v", err)
			}
		})
	}
	if _, ok := m.peerSeen(healthList); ok {
		t.Error("a denied call reached the handler")
	}
}

func mustNodeAgent(t *testing.T, node string) spiffeid.ID {
	t.Helper()
	id, err := servicetls.NodeAgentID(td, node)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestMTLSClientWithoutCertificate(t *testing.T) {
	m := startMesh(t)
	caPEM, err := os.ReadFile(m.dir + "/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA in ca.pem")
	}
	// Plain TLS that trusts the control-plane CA (the server certificate names 127.0.0.1).
	c := m.dial(t, credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}))

	resp, err := c.Check(callCtx(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("open Health/Check without a client certificate: %v", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Check = %v", resp.GetStatus())
	}
	_, err = c.List(callCtx(t), &healthpb.HealthListRequest{})
	requireCode(t, "List", err, codes.Unauthenticated)
	requireCode(t, "Watch", watchFirst(t, c), codes.Unauthenticated)
}

func TestMTLSClientFromAnotherCAFails(t *testing.T) {
	m := startMesh(t)
	// A citadel certificate from a different CA of the same trust domain; the client itself trusts
	// the real CA, so only the server's check of the client certificate can fail the call.
	foreign := issue(t, newCA(t), t.TempDir(), "citadel", serviceID(t, servicetls.Citadel))
	foreign.CAFile = m.dir + "/ca.pem"
	ident, err := servicetls.Load(foreign)
	if err != nil {
		t.Fatal(err)
	}
	c := m.dial(t, ident.ClientCredentials(m.serverID))
	_, err = c.Check(callCtx(t), &healthpb.HealthCheckRequest{})
	requireCode(t, "Check with a foreign client certificate", err, codes.Unavailable)
	_, err = c.List(callCtx(t), &healthpb.HealthListRequest{})
	requireCode(t, "List with a foreign client certificate", err, codes.Unavailable)
}

func TestMTLSClientRefusesUnexpectedServer(t *testing.T) {
	m := startMesh(t)
	citadel := m.load(t, "citadel", serviceID(t, servicetls.Citadel))
	c := m.dial(t, citadel.ClientCredentials(serviceID(t, servicetls.MCPSync)))
	_, err := c.Check(callCtx(t), &healthpb.HealthCheckRequest{})
	st := requireCode(t, "Check against a server with another ID", err, codes.Unavailable)
	if !strings.Contains(st.Message(), m.serverID.String()) {
		t.Errorf("error %q does not name the ID the server presented (%s)", st.Message(), m.serverID)
	}
}

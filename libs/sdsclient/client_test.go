package sdsclient_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 10 * time.Second

// fakeAgent stands in for the node agent's SDS server: it serves one secret and records what the
// client sent.
type fakeAgent struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	secret *tlsv3.Secret

	fetches chan fetchCall
	stream  chan *discovery.DiscoveryRequest
}

type fetchCall struct {
	req           *discovery.DiscoveryRequest
	authorization []string
}

func (a *fakeAgent) FetchSecrets(ctx context.Context, req *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	a.fetches <- fetchCall{req: req, authorization: md.Get(workloadtoken.GRPCMetadataKey)}
	res, err := anypb.New(a.secret)
	if err != nil {
		return nil, err
	}
	return &discovery.DiscoveryResponse{VersionInfo: "v1", Nonce: "n1", TypeUrl: sdsclient.SecretTypeURL, Resources: []*anypb.Any{res}}, nil
}

// StreamSecrets answers the first request with the secret and the second with an undecodable
// resource, recording every request (so the test sees the ACK and the NACK).
func (a *fakeAgent) StreamSecrets(s secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	good, err := anypb.New(a.secret)
	if err != nil {
		return err
	}
	bad := &anypb.Any{TypeUrl: sdsclient.SecretTypeURL, Value: []byte{0xff, 0xff, 0xff}}
	responses := []*discovery.DiscoveryResponse{
		{VersionInfo: "v1", Nonce: "n1", TypeUrl: sdsclient.SecretTypeURL, Resources: []*anypb.Any{good}},
		{VersionInfo: "v2", Nonce: "n2", TypeUrl: sdsclient.SecretTypeURL, Resources: []*anypb.Any{bad}},
	}
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		a.stream <- req
		if len(responses) > 0 {
			if err := s.Send(responses[0]); err != nil {
				return err
			}
			responses = responses[1:]
		}
	}
}

// startAgent serves a fakeAgent on a Unix socket in a fresh temporary directory and returns the
// socket's absolute path.
func startAgent(t *testing.T) (*fakeAgent, string) {
	t.Helper()
	// Not t.TempDir: test names make paths that can exceed the 108-byte limit of socket addresses.
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	kp := newKeyPair(t, workloadID)
	agent := &fakeAgent{
		secret:  tlsCertificateSecret("default", kp.certPEM, kp.keyPEM),
		fetches: make(chan fetchCall, 4),
		stream:  make(chan *discovery.DiscoveryRequest, 4),
	}
	srv := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(srv, agent)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return agent, sock
}

func dial(t *testing.T, path string) *sdsclient.Client {
	t.Helper()
	c, err := sdsclient.Dial(path)
	if err != nil {
		t.Fatalf("Dial(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func timeoutCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestDialRelativeSocketPath(t *testing.T) {
	_, sock := startAgent(t)
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	// Relative to the working directory, without changing it.
	rel, err := filepath.Rel(cwd, sock)
	if err != nil {
		t.Skipf("socket %s has no path relative to %s: %v", sock, cwd, err)
	}
	if filepath.IsAbs(rel) {
		t.Fatalf("%s is not relative", rel)
	}
	secrets, err := dial(t, rel).Fetch(timeoutCtx(t), "sidecar~10.0.0.1~payments.shop~shop.svc.cluster.local", sdsclient.Credential{}, "default")
	if err != nil {
		t.Fatalf("Fetch over relative socket path %s: %v", rel, err)
	}
	if _, ok := secrets["default"]; !ok {
		t.Fatalf("Fetch returned %v, want the default secret", secrets)
	}
}

func TestFetchPresentsToken(t *testing.T) {
	agent, sock := startAgent(t)
	c := dial(t, sock)
	const node = "sidecar~10.0.0.1~payments.shop~shop.svc.cluster.local"

	t.Run("grpc metadata", func(t *testing.T) {
		secrets, err := c.Fetch(timeoutCtx(t), node, sdsclient.Credential{Token: "tok-1"}, "default")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sdsclient.Certificate(secrets["default"]); err != nil {
			t.Fatalf("fetched default secret: %v", err)
		}
		call := <-agent.fetches
		if !slices.Equal(call.authorization, []string{"Bearer tok-1"}) {
			t.Errorf("authorization metadata = %q, want [Bearer tok-1]", call.authorization)
		}
		if call.req.GetNode().GetId() != node || call.req.GetTypeUrl() != sdsclient.SecretTypeURL ||
			!slices.Equal(call.req.GetResourceNames(), []string{"default"}) {
			t.Errorf("request = %v", call.req)
		}
		if call.req.GetNode().GetMetadata() != nil {
			t.Errorf("token also sent in node metadata: %v", call.req.GetNode().GetMetadata())
		}
	})
	t.Run("node metadata", func(t *testing.T) {
		if _, err := c.Fetch(timeoutCtx(t), node, sdsclient.Credential{Token: "tok-2", InNodeMetadata: true}, "default"); err != nil {
			t.Fatal(err)
		}
		call := <-agent.fetches
		if len(call.authorization) != 0 {
			t.Errorf("token also sent as gRPC metadata: %q", call.authorization)
		}
		got := call.req.GetNode().GetMetadata().GetFields()[workloadtoken.NodeMetadataKey].GetStringValue()
		if got != "tok-2" {
			t.Errorf("node metadata %s = %q, want tok-2", workloadtoken.NodeMetadataKey, got)
		}
	})
}

func TestStreamAcksAndNacks(t *testing.T) {
	agent, sock := startAgent(t)
	ctx, cancel := context.WithCancel(timeoutCtx(t))
	defer cancel()
	s, err := dial(t, sock).Open(ctx, "node-1", sdsclient.Credential{Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(true, "default", "ROOTCA"); err != nil {
		t.Fatal(err)
	}
	secrets, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if _, ok := secrets["default"]; !ok {
		t.Fatalf("Recv = %v, want the default secret", secrets)
	}
	if _, err := s.Recv(); err == nil {
		t.Fatal("Recv decoded a garbage resource")
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}

	first, ack, nack := <-agent.stream, <-agent.stream, <-agent.stream
	if first.GetNode().GetId() != "node-1" || first.GetResponseNonce() != "" ||
		!slices.Equal(first.GetResourceNames(), []string{"default", "ROOTCA"}) {
		t.Errorf("first request = %v", first)
	}
	if ack.GetNode() != nil {
		t.Errorf("node sent again after the first request: %v", ack.GetNode())
	}
	if ack.GetResponseNonce() != "n1" || ack.GetVersionInfo() != "v1" || ack.GetErrorDetail() != nil ||
		!slices.Equal(ack.GetResourceNames(), []string{"default", "ROOTCA"}) {
		t.Errorf("ACK = %v, want nonce n1, version v1, no error, all names", ack)
	}
	// xDS: a NACK carries the rejected response's nonce but the version still in use.
	if nack.GetResponseNonce() != "n2" || nack.GetVersionInfo() != "v1" || nack.GetErrorDetail() == nil {
		t.Errorf("NACK = %v, want nonce n2, version v1 (the last accepted) and an error detail", nack)
	}
}

package app

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/config"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/kmstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("example.org")

// TestAppServesOnceReady runs the whole wiring: a stand-in mcp-sync (go-control-plane's ADS server
// over a LinearCache of pods) and a stand-in kms-adapter (package kmstest; the real one is
// exercised by the e2e suite), both behind real mTLS, and citadel on ephemeral ports.
func TestAppServesOnceReady(t *testing.T) {
	dir := t.TempDir()
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name, service string) servicetls.Files {
		id, err := servicetls.ServiceID(td, service)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ca.Issue(dir, name, id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}

	kms := kmstest.New(t, td, clock.RealClock{})
	kmsAddr, _ := kms.Serve(t, load(t, issue("kms-adapter", servicetls.KMSAdapter)))
	mcpAddr := serveMCP(t, load(t, issue("mcp-sync", servicetls.MCPSync)), &mcpv1.Pod{
		Name: "shop/cart-0", Namespace: "shop", PodName: "cart-0", Uid: "uid-1", NodeName: "node-a", ServiceAccount: "cart",
	})

	tokens, err := workloadtoken.NewIssuer("https://issuer.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(tokens.KeySet())
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}

	cfg := config.Config{
		Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", KMSAddr: kmsAddr, MCPAddr: mcpAddr,
		TokenIssuer: "https://issuer.test", TokenAudience: "other,portcullis", TokenKeys: workloadtoken.KeySource{JWKSFile: jwksFile},
		DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour, CacheSize: 10, BundleRefresh: time.Minute,
		JWTDefaultTTL: 5 * time.Minute, JWTMaxTTL: time.Hour,
		TLS: issue("citadel", servicetls.Citadel),
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	a, err := New(cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	grpcAddr, adminAddr := logs.listening(t, "grpc"), logs.listening(t, "admin")
	waitFor(t, func() bool {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	nodeFiles, err := ca.Issue(dir, "nodeagent-a", mustID(servicetls.NodeAgentID(td, "node-a")), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(
		load(t, nodeFiles).ClientCredentials(mustID(servicetls.ServiceID(td, servicetls.Citadel)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING once ready", hc.GetStatus(), err)
	}

	tok, err := tokens.Issue(workloadtoken.Workload{Namespace: "shop", PodName: "cart-0", PodUID: "uid-1", ServiceAccount: "cart"},
		[]string{"portcullis"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	csr := newCSR(t)
	callCtx := metadata.AppendToOutgoingContext(ctx, workloadtoken.GRPCMetadataKey, "Bearer "+tok)
	resp, err := authv1.NewIstioCertificateServiceClient(conn).CreateCertificate(callCtx, &authv1.IstioCertificateRequest{Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetCertChain()) != 2 || kms.Signs.Load() != 1 {
		t.Fatalf("chain of %d, %d kms calls", len(resp.GetCertChain()), kms.Signs.Load())
	}

	metricsResp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(metricsResp.Body)
	_ = metricsResp.Body.Close()
	for _, want := range []string{
		"citadel_server_success_cert_issuance_count 1\n",
		"portcullis_citadel_cache_misses_total 1\n",
		fmt.Sprintf("citadel_server_root_cert_expiry_timestamp %g\n", float64(kms.Root.NotAfter.Unix())),
		"go_goroutines ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// serveMCP serves pods the way mcp-sync does (ADS, SotW, custom type URL) to citadel only.
func serveMCP(t *testing.T, id *servicetls.Identity, pods ...*mcpv1.Pod) string {
	t.Helper()
	res := map[string]types.Resource{}
	for _, p := range pods {
		res[p.GetName()] = p
	}
	ctx, cancel := context.WithCancel(context.Background())
	xds := xdsserver.NewServer(ctx, cache.NewLinearCache(mcpclient.PodTypeURL, cache.WithInitialResources(res)), nil)
	opts := append([]grpc.ServerOption{grpc.Creds(id.ServerCredentials())},
		servicetls.Interceptors(servicetls.AllowServices(servicetls.Citadel))...)
	srv := grpc.NewServer(opts...)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, xds)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); cancel() })
	return lis.Addr().String()
}

func load(t *testing.T, f servicetls.Files) *servicetls.Identity {
	t.Helper()
	id, err := servicetls.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustID(id spiffeid.ID, err error) spiffeid.ID {
	if err != nil {
		panic(err)
	}
	return id
}

// syncBuffer collects the JSON log lines, from which the test reads the bound addresses as the
// dev stack does.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) listening(t *testing.T, listener string) string {
	t.Helper()
	var addr string
	waitFor(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, line := range strings.Split(b.buf.String(), "\n") {
			var rec struct{ Msg, Listener, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" && rec.Listener == listener {
				addr = rec.Addr
				return true
			}
		}
		return false
	})
	return addr
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newCSR(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

package grpcapi_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/grpcapi"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/revocation"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	workload = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
)

// env is a kms-adapter API served over real mTLS on 127.0.0.1:0, and the control-plane
// certificates of its would-be callers.
type env struct {
	addr     string
	serverID spiffeid.ID
	citadel  servicetls.Files
	agent    servicetls.Files
	admin    servicetls.Files
	revoked  *revocation.Store
}

func start(t testing.TB, backend kms.Backend, opts ...func(*grpcapi.Config)) env {
	t.Helper()
	dir := t.TempDir()
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]spiffeid.ID{}
	for name, mk := range map[string]func() (spiffeid.ID, error){
		servicetls.KMSAdapter: func() (spiffeid.ID, error) { return servicetls.ServiceID(td, servicetls.KMSAdapter) },
		servicetls.Citadel:    func() (spiffeid.ID, error) { return servicetls.ServiceID(td, servicetls.Citadel) },
		servicetls.NodeAgent:  func() (spiffeid.ID, error) { return servicetls.NodeAgentID(td, "node-1") },
		servicetls.Admin:      func() (spiffeid.ID, error) { return servicetls.ServiceID(td, servicetls.Admin) },
	} {
		if ids[name], err = mk(); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(name string) servicetls.Files {
		f, err := ca.Issue(dir, name, ids[name], time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	identity, err := servicetls.Load(issue(servicetls.KMSAdapter))
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := revocation.Open(revocation.Config{Dir: dir, MaxLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	cfg := grpcapi.Config{Backend: backend, Revocations: revoked, Logger: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&cfg)
	}
	srv := grpcapi.New(cfg).GRPCServer(identity.ServerCredentials(), hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return env{addr: lis.Addr().String(), serverID: ids[servicetls.KMSAdapter],
		citadel: issue(servicetls.Citadel), agent: issue(servicetls.NodeAgent), admin: issue(servicetls.Admin), revoked: revoked}
}

func (e env) dial(t testing.TB, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func (e env) client(t testing.TB, files servicetls.Files) kmsv1.KeyManagementServiceClient {
	t.Helper()
	return kmsv1.NewKeyManagementServiceClient(e.conn(t, files))
}

func (e env) conn(t testing.TB, files servicetls.Files) *grpc.ClientConn {
	t.Helper()
	id, err := servicetls.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	return e.dial(t, id.ClientCredentials(e.serverID))
}

// anonymous verifies the server but presents no client certificate.
func (e env) anonymous(t *testing.T) *grpc.ClientConn {
	t.Helper()
	bundle, err := x509bundle.Load(td, e.citadel.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	return e.dial(t, credentials.NewTLS(tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(e.serverID))))
}

func localCA(t testing.TB) kms.Backend {
	t.Helper()
	ca, err := local.New(local.Config{StateDir: t.TempDir(), TrustDomain: td, DefaultTTL: 24 * time.Hour,
		MaxTTL: 2160 * time.Hour, RootTTL: 8760 * time.Hour, Clock: clock.RealClock{}})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestCitadelGetsAChainForTheRequestedIdentity(t *testing.T) {
	e := start(t, localCA(t))
	citadel := e.client(t, e.citadel)
	ctx := t.Context()

	victim := spiffeid.RequireFromPath(td, "/ns/kube-system/sa/admin")
	resp, err := citadel.SignCertificate(ctx, &kmsv1.SignCertificateRequest{
		Csr: kmstest.HostileCSRDER(t, kmstest.NewKey(t), victim.URL()), SpiffeId: workload.String(), TtlSeconds: 3600,
	})
	if err != nil {
		t.Fatalf("SignCertificate: %v", err)
	}
	bundle, err := citadel.GetTrustBundle(ctx, &kmsv1.GetTrustBundleRequest{})
	if err != nil {
		t.Fatalf("GetTrustBundle: %v", err)
	}
	if bundle.GetTrustDomain() != td.Name() || len(bundle.GetRootCertificates()) != 1 {
		t.Fatalf("bundle = %s with %d roots, want %s with one", bundle.GetTrustDomain(), len(bundle.GetRootCertificates()), td)
	}
	chain := resp.GetCertChain()
	if len(chain) != 3 || !bytes.Equal(chain[len(chain)-1], bundle.GetRootCertificates()[0]) {
		t.Fatalf("chain of %d certificates does not end with the bundle's root", len(chain))
	}
	roots, err := x509.ParseCertificates(bytes.Join(bundle.GetRootCertificates(), nil))
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := x509svid.ParseAndVerify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil {
		t.Fatalf("chain is not a valid X509-SVID: %v", err)
	}
	if got != workload {
		t.Errorf("certified %s, want %s", got, workload)
	}
	leaf, _ := x509.ParseCertificate(chain[0])
	if len(leaf.URIs) != 1 || len(leaf.DNSNames) != 0 {
		t.Errorf("leaf SANs uri=%v dns=%v, want only %s", leaf.URIs, leaf.DNSNames, workload)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < time.Hour || life > time.Hour+2*time.Minute {
		t.Errorf("lifetime %s, want ttl_seconds 3600 (+ backdating)", life)
	}
}

func TestOnlyCitadelMayCall(t *testing.T) {
	e := start(t, localCA(t))
	ctx := t.Context()
	req := &kmsv1.SignCertificateRequest{Csr: kmstest.CSRDER(t, kmstest.NewKey(t)), SpiffeId: workload.String()}

	agent := e.client(t, e.agent)
	_, err := agent.SignCertificate(ctx, req)
	wantCode(t, "node agent: SignCertificate", err, codes.PermissionDenied)
	_, err = agent.GetTrustBundle(ctx, &kmsv1.GetTrustBundleRequest{})
	wantCode(t, "node agent: GetTrustBundle", err, codes.PermissionDenied)
	_, err = agent.GetRevocations(ctx, &kmsv1.GetRevocationsRequest{})
	wantCode(t, "node agent: GetRevocations", err, codes.PermissionDenied)

	anon := e.anonymous(t)
	_, err = kmsv1.NewKeyManagementServiceClient(anon).SignCertificate(ctx, req)
	wantCode(t, "no client certificate", err, codes.Unauthenticated)

	// Health stays open so that probes need no certificate.
	for _, service := range []string{"", kmsv1.KeyManagementService_ServiceDesc.ServiceName} {
		hc, err := healthgrpc.NewHealthClient(anon).Check(ctx, &healthgrpc.HealthCheckRequest{Service: service})
		if err != nil || hc.GetStatus() != healthgrpc.HealthCheckResponse_SERVING {
			t.Errorf("health of %q without a certificate: %v, %v", service, hc.GetStatus(), err)
		}
	}
}

// Citadel reads the revocation state, with the serials recorded at signing.
func TestCitadelReadsTheRevocationState(t *testing.T) {
	e := start(t, nil)
	rev, err := e.revoked.Revoke(workload)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.client(t, e.citadel).GetRevocations(t.Context(), &kmsv1.GetRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersion() == 0 || len(resp.GetRevocations()) != 1 {
		t.Fatalf("state %v, want one revocation at a non-zero version", resp)
	}
	r := resp.GetRevocations()[0]
	if r.GetSpiffeId() != workload.String() || !r.GetRevokedAt().AsTime().Equal(rev.RevokedAt) ||
		!r.GetNotBeforeCutoff().AsTime().Equal(rev.Cutoff) || !r.GetExpiresAt().AsTime().Equal(rev.ExpiresAt) {
		t.Errorf("served %v, want %+v", r, rev)
	}
}

func TestInvalidRequestsAreInvalidArgument(t *testing.T) {
	e := start(t, localCA(t))
	citadel := e.client(t, e.citadel)
	good := kmstest.CSRDER(t, kmstest.NewKey(t))
	foreign := spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("evil.example"), "/ns/default/sa/web")
	for name, req := range map[string]*kmsv1.SignCertificateRequest{
		"malformed csr":     {Csr: []byte("not a csr"), SpiffeId: workload.String()},
		"empty csr":         {SpiffeId: workload.String()},
		"bad signature":     {Csr: kmstest.BadSignatureCSRDER(t), SpiffeId: workload.String()},
		"foreign identity":  {Csr: good, SpiffeId: foreign.String()},
		"not a spiffe id":   {Csr: good, SpiffeId: "https://example.com/web"},
		"negative lifetime": {Csr: good, SpiffeId: workload.String(), TtlSeconds: -1},
	} {
		_, err := citadel.SignCertificate(t.Context(), req)
		wantCode(t, name, err, codes.InvalidArgument)
	}
}

// failing is a backend that fails every call with err.
type failing struct{ err error }

func (f failing) Sign(context.Context, kms.SignRequest) ([]*x509.Certificate, error) {
	return nil, f.err
}
func (f failing) TrustBundle(context.Context) (kms.Bundle, error) { return kms.Bundle{}, f.err }

func TestBackendFailuresMapToStatusCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("%w: vault sealed", kms.ErrUnavailable), codes.Unavailable},
		{errors.New("disk on fire"), codes.Internal},
		{fmt.Errorf("%w: unsupported key", kms.ErrInvalidCSR), codes.InvalidArgument},
		{fmt.Errorf("%w: no such role", kms.ErrInvalidIdentity), codes.InvalidArgument},
	} {
		e := start(t, failing{tc.err})
		citadel := e.client(t, e.citadel)
		_, err := citadel.SignCertificate(t.Context(), &kmsv1.SignCertificateRequest{
			Csr: kmstest.CSRDER(t, kmstest.NewKey(t)), SpiffeId: workload.String(),
		})
		wantCode(t, tc.err.Error(), err, tc.want)
		if err != nil && !strings.Contains(status.Convert(err).Message(), tc.err.Error()) {
			t.Errorf("%v: message %q does not say why", tc.err, status.Convert(err).Message())
		}
		_, err = citadel.GetTrustBundle(t.Context(), &kmsv1.GetTrustBundleRequest{})
		wantCode(t, "trust bundle: "+tc.err.Error(), err, tc.want)
	}
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: code %s (%v), want %s", what, got, err, want)
	}
}

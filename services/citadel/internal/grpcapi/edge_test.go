package grpcapi

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// workloadCertificate is what a pod holds: a leaf for its SPIFFE ID from the workload CA, which is
// not the control-plane CA that citadel trusts for callers.
func workloadCertificate(t *testing.T, id string) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: ca.NotBefore, NotAfter: ca.NotAfter,
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

// dialTLS connects to citadel trusting its certificate and presenting certs (maybe none).
func (h *harness) dialTLS(t *testing.T, certs ...tls.Certificate) authv1.IstioCertificateServiceClient {
	t.Helper()
	caPEM, err := os.ReadFile(h.dir + "/citadel/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, Certificates: certs, ServerName: "localhost", MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return authv1.NewIstioCertificateServiceClient(conn)
}

// Refusals made before CreateCertificate runs are logged, naming who was refused, and counted.
func TestRefusalsBeforeTheHandlerAreLoggedAndCounted(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	csr, _ := newCSR(t)
	refused := func(reason string) float64 {
		return testutil.ToFloat64(h.metrics.RefusedBeforeHandler.WithLabelValues(reason))
	}
	wantLog := func(parts ...string) {
		t.Helper()
		for _, line := range strings.Split(h.logs.String(), "\n") {
			if containsAll(line, parts...) {
				return
			}
		}
		t.Errorf("no log line contains all of %q; log:\n%s", parts, h.logs.String())
	}

	_, err := createCert(h.dialTLS(t), h.token(cartWorkload), csr, 0)
	wantCode(t, err, codes.Unauthenticated)
	if got := refused(metrics.ReasonNoClientCertificate); got != 1 {
		t.Errorf("%s refusals = %v, want 1", metrics.ReasonNoClientCertificate, got)
	}
	wantLog("call refused before its handler", "CreateCertificate", "peer_id=none", "no_client_certificate")

	kmsID := mustID(servicetls.ServiceID(td, servicetls.KMSAdapter))
	_, err = createCert(h.client("as-kms", kmsID), h.token(cartWorkload), csr, 0)
	wantCode(t, err, codes.PermissionDenied)
	if got := refused(metrics.ReasonCallerNotAllowed); got != 1 {
		t.Errorf("%s refusals = %v, want 1", metrics.ReasonCallerNotAllowed, got)
	}
	wantLog("call refused before its handler", "CreateCertificate", kmsID.String(), "caller_not_allowed")

	// A pod's own certificate used as a client certificate: the client sees a TLS alert, the
	// server says whose certificate it refused.
	workloadID := "spiffe://example.org/ns/shop/sa/cart"
	_, err = createCert(h.dialTLS(t, workloadCertificate(t, workloadID)), h.token(cartWorkload), csr, 0)
	wantCode(t, err, codes.Unavailable)
	if got := refused(metrics.ReasonBadClientCertificate); got < 1 {
		t.Errorf("%s refusals = %v, want at least 1", metrics.ReasonBadClientCertificate, got)
	}
	wantLog("client certificate refused in the TLS handshake", workloadID, "127.0.0.1:")
	if n := h.kms.Signs.Load(); n != 0 {
		t.Errorf("kms-adapter signed %d times", n)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// syncBuffer is a log sink that tests can read while the server writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

package issuer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/kmstest"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// lyingKMS wraps the test signer and rewrites what it is asked, to check that citadel does not
// pass on a chain for another identity or key. (The gRPC path is covered in grpcapi's tests.)
type lyingKMS struct {
	signer  *kmstest.Server
	rewrite func(*kmsv1.SignCertificateRequest)
	err     error
}

func (k *lyingKMS) SignCertificate(ctx context.Context, in *kmsv1.SignCertificateRequest, _ ...grpc.CallOption) (*kmsv1.SignCertificateResponse, error) {
	if k.err != nil {
		return nil, k.err
	}
	k.rewrite(in)
	return k.signer.SignCertificate(ctx, in)
}

type fixedVerifier workloadtoken.Workload

func (v fixedVerifier) Verify(string) (workloadtoken.Workload, error) {
	return workloadtoken.Workload(v), nil
}

func TestRefusesChainsKMSShouldNotHaveSigned(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	clk := clocktesting.NewFakeClock(time.Now())
	pods := mcpclient.NewPods()
	if err := pods.Apply(nil); err != nil { // sign is called directly below; the pod view is unused
		t.Fatal(err)
	}
	otherKey := newCSRDER(t)
	for _, tc := range []struct {
		name    string
		rewrite func(*kmsv1.SignCertificateRequest)
		err     error
		want    error
		msg     string
	}{
		{"leaf for another identity", func(r *kmsv1.SignCertificateRequest) { r.SpiffeId = "spiffe://example.org/ns/kube-system/sa/admin" },
			nil, ErrSigning, "leaf for [spiffe://example.org/ns/kube-system/sa/admin]"},
		{"leaf for another key", func(r *kmsv1.SignCertificateRequest) { r.Csr = otherKey }, nil, ErrSigning, "another public key"},
		{"kms refuses", nil, status.Error(codes.FailedPrecondition, "ca not initialized"), ErrSigning, "FailedPrecondition: ca not initialized"},
		{"kms deadline", nil, status.Error(codes.DeadlineExceeded, "slow vault"), ErrKMSUnavailable, "kms-adapter unavailable: slow vault"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss, err := New(Config{
				TrustDomain: td, Pods: pods, Verifier: fixedVerifier{}, Clock: clk, Roots: noRoots, Revocations: noRevocations{},
				KMS:        &lyingKMS{signer: kmstest.New(t, td, clk), rewrite: tc.rewrite, err: tc.err},
				DefaultTTL: time.Hour, MaxTTL: time.Hour, CacheSize: 10,
				Metrics: metrics.New(prometheus.NewRegistry()), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			csr, err := parseCSR(newCSRDER(t))
			if err != nil {
				t.Fatal(err)
			}
			id := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/cart")
			_, err = iss.sign(context.Background(), "node-a", id, csr, time.Hour)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
			if iss.cache.Len() != 0 {
				t.Error("refused chain was cached")
			}
		})
	}
}

func newCSRDER(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// noRoots serves issuers whose tests make no renewals.
func noRoots(context.Context) ([]*x509.Certificate, error) {
	return nil, errors.New("no trust bundle in this test")
}

// noRevocations is a loaded, empty revocation state: these tests make no renewal.
type noRevocations struct{}

func (noRevocations) Loaded() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (noRevocations) Revoked(context.Context, spiffeid.ID, *x509.Certificate) (bool, error) {
	return false, nil
}

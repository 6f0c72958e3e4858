package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/kmstest"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// The cache of verified CSRs is bounded by bytes: with the default -cache-size of 100,000 entries
// and CSRs just under MaxCSRBytes, an entry bound alone would allow over 6 GiB.
func TestVerifiedCSRCacheIsBoundedByBytes(t *testing.T) {
	const maxBytes = 2 << 20
	td := spiffeid.RequireTrustDomainFromString("example.org")
	clk := clocktesting.NewFakeClock(time.Now())
	iss, err := New(Config{
		TrustDomain: td, Pods: mcpclient.NewPods(), Verifier: fixedVerifier{}, Clock: clk, Roots: noRoots, Revocations: noRevocations{},
		KMS: &lyingKMS{signer: kmstest.New(t, td, clk)}, DefaultTTL: time.Hour, MaxTTL: time.Hour, CacheSize: 100000,
		CSRCacheBytes: maxBytes,
		Metrics:       metrics.New(prometheus.NewRegistry()), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pad := make([]byte, MaxCSRBytes*3/4-1000) // the largest CSRs decodeCSR lets through
	n := maxBytes/len(pad) + 20
	for i := range n {
		if _, err := rand.Read(pad[:16]); err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: pad}},
		}, key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := iss.checkCSR(der); err != nil {
			t.Fatalf("CSR %d: %v", i, err)
		}
		if got := iss.VerifiedCSRBytes(); got > maxBytes {
			t.Fatalf("after %d CSRs of %d bytes the cache holds %d bytes, bound is %d", i+1, len(der), got, maxBytes)
		}
	}
	t.Logf("%d CSRs of ~%d KiB: the cache holds %d of them, %.1f MiB", n, len(pad)>>10, iss.csrs.Len(), float64(iss.VerifiedCSRBytes())/(1<<20))
}

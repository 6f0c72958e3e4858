package servicetls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func signedSVID(t *testing.T, ca *BootstrapCA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(id, &key.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func TestRotatingServesTheLatestCertificate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/portcullis/nodeagent/n1")
	first := signedSVID(t, ca, id)
	r, err := NewRotating(first, caFile)
	if err != nil {
		t.Fatal(err)
	}
	ident := r.Identity()
	if got := servedSerial(t, ident); got.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("served serial %v, want the first certificate's", got)
	}
	second := signedSVID(t, ca, id)
	if err := r.Set(second); err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, ident); got.Cmp(second.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("served serial %v after Set, want the second certificate's", got)
	}
	other := signedSVID(t, ca, spiffeid.RequireFromString("spiffe://example.org/portcullis/nodeagent/n2"))
	if err := r.Set(other); err == nil || !strings.Contains(err.Error(), "n2") {
		t.Fatalf("Set of another ID: %v, want a refusal naming it", err)
	}
}

func TestLoadBootstrapCARoundTrip(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadBootstrapCA(td, ca.CertPEM(), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, leafKeyPEM, err := loaded.IssuePEM(spiffeid.RequireFromString("spiffe://example.org/portcullis/citadel"), 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(certPEM, leafKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if leaf := svid.Certificates[0]; leaf.NotAfter.After(ca.Certificate().NotAfter) {
		t.Fatalf("leaf valid until %v outlives its CA (%v)", leaf.NotAfter, ca.Certificate().NotAfter)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("leaf of the loaded CA does not chain to the original: %v", err)
	}

	other, err := NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadBootstrapCA(td, other.CertPEM(), keyPEM); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: %v, want a refusal", err)
	}
}

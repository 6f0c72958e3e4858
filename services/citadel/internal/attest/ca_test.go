package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

func writeCA(t *testing.T, dir string, ca *servicetls.BootstrapCA) (string, string) {
	t.Helper()
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// A rotated CA (the Secret volume updated in place) signs from the next request on; a broken
// replacement keeps the last good CA.
func TestCAFilesFollowTheFiles(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	dir := t.TempDir()
	first, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeCA(t, dir, first)
	files, err := LoadCAFiles(td, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	files.interval = 0 // look at the files on every signature

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/portcullis/nodeagent/n1")
	chain, err := files.Sign(id, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain[0].CheckSignatureFrom(first.Certificate()); err != nil {
		t.Fatalf("not signed by the first CA: %v", err)
	}

	second, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a distinct modification time
	writeCA(t, dir, second)
	chain, err = files.Sign(id, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain[0].CheckSignatureFrom(second.Certificate()); err != nil {
		t.Fatalf("after the files changed, not signed by the new CA: %v", err)
	}

	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(keyFile, []byte("half-written"), 0o600); err != nil {
		t.Fatal(err)
	}
	chain, err = files.Sign(id, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain[0].CheckSignatureFrom(second.Certificate()); err != nil {
		t.Fatalf("a broken replacement was taken: %v", err)
	}
}

package servicetls_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

func newCA(t *testing.T) *servicetls.BootstrapCA {
	t.Helper()
	ca, err := servicetls.NewBootstrapCA(td, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func serviceID(t *testing.T, name string) spiffeid.ID {
	t.Helper()
	id, err := servicetls.ServiceID(td, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func issue(t *testing.T, ca *servicetls.BootstrapCA, dir, name string, id spiffeid.ID) servicetls.Files {
	t.Helper()
	f, err := ca.Issue(dir, name, id, time.Hour)
	if err != nil {
		t.Fatalf("Issue %s: %v", id, err)
	}
	return f
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestBootstrapCAIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs") // Issue creates the directory
	id := serviceID(t, servicetls.Citadel)
	f := issue(t, newCA(t), dir, "citadel", id)

	want := servicetls.Files{
		CertFile: filepath.Join(dir, "citadel.pem"),
		KeyFile:  filepath.Join(dir, "citadel-key.pem"),
		CAFile:   filepath.Join(dir, "ca.pem"),
	}
	if f != want {
		t.Fatalf("Issue = %+v, want %+v", f, want)
	}
	for path, mode := range map[string]os.FileMode{f.KeyFile: 0o600, f.CertFile: 0o644, f.CAFile: 0o644} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}

	leaf, root := readCert(t, f.CertFile), readCert(t, f.CAFile)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Fatalf("leaf URI SANs = %v, want [%s]", leaf.URIs, id)
	}
	if !root.IsCA {
		t.Fatal("ca.pem is not a CA certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("leaf does not chain to ca.pem for usage %v: %v", usage, err)
		}
	}
	if leaf.NotAfter.After(time.Now().Add(time.Hour + time.Minute)) {
		t.Errorf("leaf valid until %v, asked for one hour", leaf.NotAfter)
	}
}

func TestBootstrapCAIssueRefusesForeignTrustDomain(t *testing.T) {
	dir := t.TempDir()
	foreign := spiffeid.RequireFromString("spiffe://elsewhere.test/portcullis/citadel")
	_, err := newCA(t).Issue(dir, "citadel", foreign, time.Hour)
	if err == nil || !strings.Contains(err.Error(), "elsewhere.test") {
		t.Fatalf("Issue error = %v, want one naming the foreign ID", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused Issue still wrote %d files", len(entries))
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t)
	id := serviceID(t, servicetls.KMSAdapter)
	f := issue(t, ca, dir, "kms", id)

	ident, err := servicetls.Load(f)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if ident.ID() != id {
		t.Errorf("ID = %s, want %s", ident.ID(), id)
	}
	if ident.TrustDomain() != td {
		t.Errorf("TrustDomain = %s, want %s", ident.TrustDomain(), td)
	}

	other := issue(t, ca, dir, "other", serviceID(t, servicetls.MCPSync))
	mismatched := servicetls.Files{CertFile: f.CertFile, KeyFile: other.KeyFile, CAFile: f.CAFile}
	if _, err := servicetls.Load(mismatched); err == nil {
		t.Fatal("Load accepted a key that does not match the certificate")
	}

	missingCA := servicetls.Files{CertFile: f.CertFile, KeyFile: f.KeyFile, CAFile: filepath.Join(dir, "nope.pem")}
	if _, err := servicetls.Load(missingCA); err == nil || !strings.Contains(err.Error(), "nope.pem") {
		t.Fatalf("Load with a missing CA file: error = %v, want one naming it", err)
	}
}

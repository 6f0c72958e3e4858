package servicetls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BootstrapCA is a control-plane CA that issues the services' own certificates. The dev stack and
// tests use it (via `portcullis bootstrap`); a production install would give the services
// certificates from its own PKI (e.g. cert-manager) with the same SPIFFE IDs.
type BootstrapCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewBootstrapCA makes a fresh CA valid for validity.
func NewBootstrapCA(td spiffeid.TrustDomain, validity time.Duration) (*BootstrapCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Portcullis"}, CommonName: "Portcullis control-plane CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{spiffeid.RequireFromSegments(td).URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating control-plane CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &BootstrapCA{td: td, cert: cert, key: key}, nil
}

// Issue writes <dir>/<name>.pem, <name>-key.pem (0600) and ca.pem for id and returns their paths.
// The certificate also names localhost and 127.0.0.1 so that plain TLS tooling can reach it.
func (ca *BootstrapCA) Issue(dir, name string, id spiffeid.ID, validity time.Duration) (Files, error) {
	if !id.MemberOf(ca.td) {
		return Files{}, fmt.Errorf("%s is not in trust domain %s", id, ca.td)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, err
	}
	cert, err := ca.Sign(id, &key.PublicKey, validity)
	if err != nil {
		return Files{}, err
	}
	der := cert.Raw
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Files{}, err
	}
	f := Files{
		CertFile: filepath.Join(dir, name+".pem"),
		KeyFile:  filepath.Join(dir, name+"-key.pem"),
		CAFile:   filepath.Join(dir, "ca.pem"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, err
	}
	err = errors.Join(
		writePEM(f.CertFile, "CERTIFICATE", der, 0o644),
		writePEM(f.KeyFile, "PRIVATE KEY", keyDER, 0o600),
		writePEM(f.CAFile, "CERTIFICATE", ca.cert.Raw, 0o644),
	)
	return f, err
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Chmod(path, mode)
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return n, nil
}

package servicetls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// LoadBootstrapCA loads an existing control-plane CA (its certificate and private key in PEM, as
// kept in a kubernetes.io/tls Secret), so that a re-run of the bootstrap or citadel's node
// attestation signs with the same CA instead of making a new one.
func LoadBootstrapCA(td spiffeid.TrustDomain, certPEM, keyPEM []byte) (*BootstrapCA, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("control-plane CA: no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("control-plane CA certificate: %w", err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("control-plane CA: the certificate is not a CA certificate")
	}
	kblock, _ := pem.Decode(keyPEM)
	if kblock == nil {
		return nil, errors.New("control-plane CA: no PEM private key")
	}
	key, err := parseECKey(kblock)
	if err != nil {
		return nil, fmt.Errorf("control-plane CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("control-plane CA: the private key does not match the certificate")
	}
	return &BootstrapCA{td: td, cert: cert, key: key}, nil
}

func parseECKey(block *pem.Block) (*ecdsa.PrivateKey, error) {
	if block.Type == "EC PRIVATE KEY" {
		return x509.ParseECPrivateKey(block.Bytes)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("want an ECDSA key, got %T", k)
	}
	return ec, nil
}

// Certificate is the CA certificate.
func (ca *BootstrapCA) Certificate() *x509.Certificate { return ca.cert }

// TrustDomain is the trust domain the CA issues in.
func (ca *BootstrapCA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// CertPEM is the CA certificate in PEM.
func (ca *BootstrapCA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// KeyPEM is the CA private key in PEM (PKCS #8). Keep it secret.
func (ca *BootstrapCA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// IssuePEM makes a key and a certificate for id and returns both in PEM (certificate, then key).
func (ca *BootstrapCA) IssuePEM(id spiffeid.ID, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	cert, err := ca.Sign(id, &key.PublicKey, validity)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// Sign certifies pub as id (server and client auth) for validity, cut at the CA's own expiry: a
// leaf that outlives its CA would fail verification before its NotAfter anyway. The certificate
// also names localhost and 127.0.0.1 so that plain TLS tooling can reach it.
func (ca *BootstrapCA) Sign(id spiffeid.ID, pub crypto.PublicKey, validity time.Duration) (*x509.Certificate, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("%s is not in trust domain %s", id, ca.td)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("issuing %s: validity %s is not positive", id, validity)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("issuing %s: the control-plane CA expired at %s", id, ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"Portcullis"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuing %s: %w", id, err)
	}
	return x509.ParseCertificate(der)
}

package secrets

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
)

// KeyType is the kind of private key the agent makes for workloads.
type KeyType string

// Supported key types.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	RSA2048   KeyType = "rsa-2048"
)

// ParseKeyType validates a key type name.
func ParseKeyType(s string) (KeyType, error) {
	switch k := KeyType(s); k {
	case ECDSAP256, RSA2048:
		return k, nil
	}
	return "", fmt.Errorf("unknown key type %q (want %s or %s)", s, ECDSAP256, RSA2048)
}

func (k KeyType) generate() (crypto.Signer, error) {
	if k == RSA2048 {
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// Certificate is an issued workload certificate and its node-local private key. It is immutable.
type Certificate struct {
	ID       spiffeid.ID
	Chain    []*x509.Certificate // leaf first, as citadel returned it (root last)
	Key      crypto.Signer
	ChainPEM []byte // leaf and intermediates, for Envoy's certificate_chain
	KeyPEM   []byte
}

// Leaf is the workload's own certificate.
func (c *Certificate) Leaf() *x509.Certificate { return c.Chain[0] }

// newCSR makes a PKCS#10 request for id signed by key. citadel takes the SAN from the
// authenticated identity, not from here; the URI SAN is only for Istio-compatible CAs' logs.
func newCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("creating csr: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// newCertificate checks what citadel returned against the key and the trust bundle before it
// may ever be pushed: one rejected update stops an Envoy listener from taking later ones.
func newCertificate(id spiffeid.ID, key crypto.Signer, chain []*x509.Certificate, roots []*x509.Certificate, now time.Time) (*Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("citadel returned an empty chain")
	}
	leaf := chain[0]
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, errors.New("certificate does not match the private key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		return nil, fmt.Errorf("certificate names %v, want %s", leaf.URIs, id)
	}
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate valid %s to %s, not now", leaf.NotBefore, leaf.NotAfter)
	}
	if err := chainsTo(chain, roots, now); err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding key: %w", err)
	}
	var presented []*x509.Certificate
	for _, c := range chain {
		if isSelfSigned(c) && len(chain) > 1 {
			continue // the root travels in ROOTCA, not in the presented chain
		}
		presented = append(presented, c)
	}
	return &Certificate{
		ID:       id,
		Chain:    chain,
		Key:      key,
		ChainPEM: pemcerts.Encode(presented),
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// chainsTo checks that chain's leaf verifies up to one of roots at now.
func chainsTo(chain, roots []*x509.Certificate, now time.Time) error {
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("certificate does not chain to the trust bundle: %w", err)
	}
	return nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

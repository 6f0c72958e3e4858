// Package kmstest is the conformance suite that every kms.Backend runs, and the CSR helpers that
// tests of kms-adapter share.
package kmstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"
)

// NewKey makes an ECDSA P-256 key, the default workload key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generating key: %v", err)
	}
	return key
}

// CSRDER makes a DER CSR for key with an empty subject.
func CSRDER(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	return csrDER(t, key, &x509.CertificateRequest{})
}

// HostileCSRDER makes a DER CSR that asks for names it must not get: a common name, a DNS SAN, an
// email SAN, an IP SAN and the URI SAN claimed, which should be another workload's identity.
func HostileCSRDER(t testing.TB, key crypto.Signer, claimed *url.URL) []byte {
	t.Helper()
	return csrDER(t, key, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin", Organization: []string{"Evil Corp"}},
		DNSNames:       []string{"evil.example.com"},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{claimed},
	})
}

// CSR parses a DER CSR made by this package.
func CSR(t testing.TB, der []byte) *x509.CertificateRequest {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("parsing csr: %v", err)
	}
	return csr
}

// BadSignatureCSR returns a parsed CSR whose signature does not match its content: its public key
// is not the one that signed it, as when a caller substitutes someone else's key.
func BadSignatureCSR(t testing.TB) *x509.CertificateRequest {
	t.Helper()
	honest := CSR(t, csrDER(t, NewKey(t), &x509.CertificateRequest{}))
	other := CSR(t, csrDER(t, NewKey(t), &x509.CertificateRequest{}))
	forged := *honest
	forged.Signature = other.Signature
	return &forged
}

// BadSignatureCSRDER is BadSignatureCSR as DER: the signature bytes of a valid CSR are flipped.
func BadSignatureCSRDER(t testing.TB) []byte {
	t.Helper()
	der := csrDER(t, NewKey(t), &x509.CertificateRequest{})
	// The signature is the tail of the DER; flipping its last byte keeps the ASN.1 well formed.
	out := append([]byte(nil), der...)
	out[len(out)-1] ^= 0x01
	if CSR(t, out).CheckSignature() == nil {
		t.Fatalf("tampered csr still verifies")
	}
	return out
}

func csrDER(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("creating csr: %v", err)
	}
	return der
}

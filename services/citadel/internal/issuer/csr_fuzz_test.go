package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
)

func fuzzCSR(f *testing.F, key any) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}}, key)
	if err != nil {
		f.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: csrPEMType, Bytes: der}))
}

// FuzzParseCSR feeds decodeCSR and parseCSR the csr field of a CreateCertificate request. An
// accepted CSR is exactly one PEM block of at most MaxCSRBytes whose self-signature verifies,
// over an allowed key.
func FuzzParseCSR(f *testing.F) {
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P224()} {
		key, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(fuzzCSR(f, key))
	}
	for _, bits := range []int{2048, 1024} {
		key, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(fuzzCSR(f, key))
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := fuzzCSR(f, p256)
	f.Add(good + good)
	f.Add(good + "trailing")
	f.Add(strings.Replace(good, "CERTIFICATE REQUEST", "CERTIFICATE", 2))
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		der, err := decodeCSR(text)
		if err != nil {
			if der != nil || !errors.Is(err, ErrInvalidCSR) {
				t.Fatalf("refusal %v (der %v) is not ErrInvalidCSR alone", err, der != nil)
			}
			return
		}
		if len(text) > MaxCSRBytes {
			t.Fatalf("accepted %d bytes of PEM", len(text))
		}
		csr, err := parseCSR(der)
		if err != nil {
			if csr != nil || !errors.Is(err, ErrInvalidCSR) {
				t.Fatalf("refusal %v (csr %v) is not ErrInvalidCSR alone", err, csr != nil)
			}
			return
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature does not verify: %v", err)
		}
		switch pub := csr.PublicKey.(type) {
		case *ecdsa.PublicKey:
			if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
				t.Fatalf("accepted curve %s", pub.Curve.Params().Name)
			}
		case *rsa.PublicKey:
			if pub.N.BitLen() < minRSAKeyBits || pub.N.BitLen() > maxRSAKeyBits {
				t.Fatalf("accepted an RSA key of %d bits", pub.N.BitLen())
			}
		default:
			t.Fatalf("accepted a %T key", pub)
		}
		block, rest := pem.Decode([]byte(text))
		if block == nil || block.Type != csrPEMType || strings.TrimSpace(string(rest)) != "" {
			t.Fatal("accepted something other than exactly one CERTIFICATE REQUEST block")
		}
	})
}

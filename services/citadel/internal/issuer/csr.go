package issuer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"
)

const (
	csrPEMType    = "CERTIFICATE REQUEST"
	minRSAKeyBits = 2048
)

// verifiedCSRMaxAge bounds how long a verified CSR is remembered.
const verifiedCSRMaxAge = 10 * time.Minute

// checkCSR is parseCSR behind a cache of CSRs that already passed, keyed by the SHA-256 of their
// PEM: a retried or repeated request (the cache-hit path) skips the signature check.
func (i *Issuer) checkCSR(pemText string) (*x509.CertificateRequest, error) {
	key, now := sha256.Sum256([]byte(pemText)), i.cfg.Clock.Now()
	if csr, ok := i.csrs.Get(key, now); ok {
		return csr, nil
	}
	csr, err := parseCSR(pemText)
	if err == nil {
		i.csrs.Put(key, csr, now.Add(verifiedCSRMaxAge), now)
	}
	return csr, err
}

// parseCSR accepts exactly one PEM CERTIFICATE REQUEST with a valid self-signature over an ECDSA
// P-256/P-384 or RSA >= 2048 key. Its names are ignored: the identity comes from the token.
func parseCSR(pemText string) (*x509.CertificateRequest, error) {
	block, rest := pem.Decode([]byte(pemText))
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found", ErrInvalidCSR)
	}
	if block.Type != csrPEMType {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrInvalidCSR, block.Type, csrPEMType)
	}
	if extra, _ := pem.Decode(rest); extra != nil || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: want exactly one PEM block, found trailing data", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrInvalidCSR, err)
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s not allowed, want P-256 or P-384", ErrInvalidCSR, pub.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSAKeyBits {
			return nil, fmt.Errorf("%w: RSA key of %d bits, want at least %d", ErrInvalidCSR, pub.N.BitLen(), minRSAKeyBits)
		}
	default:
		return nil, fmt.Errorf("%w: %s keys not allowed, want ECDSA P-256/P-384 or RSA >= %d", ErrInvalidCSR, csr.PublicKeyAlgorithm, minRSAKeyBits)
	}
	return csr, nil
}

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
	csrPEMType = "CERTIFICATE REQUEST"
	// RSA keys outside these bounds are refused, as kms-adapter refuses them: below is weak,
	// above costs the CA a lot of CPU per signature check. Refusing here answers InvalidArgument
	// instead of passing on kms-adapter's refusal as a signing failure.
	minRSAKeyBits = 2048
	maxRSAKeyBits = 8192
	// MaxCSRBytes bounds the PEM text of a CSR, far below gRPC's 4 MiB message limit: a CSR for
	// an RSA-8192 key with a few names is under 4 KiB, so 64 KiB leaves room for any honest one
	// while a caller cannot make citadel parse, hash and remember megabytes.
	MaxCSRBytes = 64 << 10
)

// Verified CSRs are remembered this long, and by default up to this many bytes (counted by
// verifiedCSRSize): the entry bound alone (-cache-size, 100,000) would let CSRs just under
// MaxCSRBytes take over 6 GiB. 64 MiB holds ~25,000 typical (P-256, ~0.5 KiB) CSRs.
const (
	verifiedCSRMaxAge       = 10 * time.Minute
	defaultVerifiedCSRBytes = 64 << 20
)

// verifiedCSRSize approximates what a cached CSR keeps alive: its DER (every Raw field of the
// parsed request points into it) and the parsed structure and key.
func verifiedCSRSize(csr *x509.CertificateRequest) int64 { return int64(len(csr.Raw)) + 2<<10 }

// decodeCSR returns the DER of exactly one PEM CERTIFICATE REQUEST of at most MaxCSRBytes. It is
// cheap (no parsing, no signature check, nothing remembered), so it may run before the caller is
// authenticated: a renewal proof signs these bytes.
func decodeCSR(pemText string) ([]byte, error) {
	if len(pemText) > MaxCSRBytes {
		return nil, fmt.Errorf("%w: %d bytes of PEM, at most %d allowed", ErrInvalidCSR, len(pemText), MaxCSRBytes)
	}
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
	return block.Bytes, nil
}

// checkCSR is parseCSR behind a cache of CSRs that already passed, keyed by the SHA-256 of their
// DER: a retried or repeated request (the cache-hit path) skips the signature check. Call it only
// for an authenticated caller, so that only such callers can fill the cache.
func (i *Issuer) checkCSR(der []byte) (*x509.CertificateRequest, error) {
	key, now := sha256.Sum256(der), i.cfg.Clock.Now()
	if csr, ok := i.csrs.Get(key, now); ok {
		return csr, nil
	}
	csr, err := parseCSR(der)
	if err == nil {
		i.csrs.Put(key, csr, now.Add(verifiedCSRMaxAge), now)
	}
	return csr, err
}

// parseCSR accepts a CSR with a valid self-signature over an ECDSA P-256/P-384 or RSA 2048-8192
// key. Its names are ignored: the identity comes from the token.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	// The key is checked before the signature: verifying with an oversized RSA key is the cost
	// the bound exists to avoid.
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s not allowed, want P-256 or P-384", ErrInvalidCSR, pub.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < minRSAKeyBits || bits > maxRSAKeyBits {
			return nil, fmt.Errorf("%w: RSA key of %d bits not allowed, want %d to %d", ErrInvalidCSR, bits, minRSAKeyBits, maxRSAKeyBits)
		}
	default:
		return nil, fmt.Errorf("%w: %s keys not allowed, want ECDSA P-256/P-384 or RSA of %d to %d bits",
			ErrInvalidCSR, csr.PublicKeyAlgorithm, minRSAKeyBits, maxRSAKeyBits)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrInvalidCSR, err)
	}
	return csr, nil
}

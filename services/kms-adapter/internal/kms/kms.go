// Package kms defines what kms-adapter needs from a certificate authority: sign a workload CSR for
// an identity that citadel has already authorized, and tell which roots those certificates chain
// to. Backends (the embedded local CA, Vault PKI) live in subpackages and are chosen by name in
// registry.go; every backend runs the conformance suite in kmstest.
package kms

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sentinel errors of every backend. The gRPC edge maps them to status codes (grpcapi); backends
// wrap them with detail, so callers test them with errors.Is.
var (
	// ErrInvalidCSR: the CSR is missing, malformed, badly signed or uses a key we do not accept.
	ErrInvalidCSR = errors.New("invalid certificate signing request")
	// ErrInvalidIdentity: the identity is not a workload SPIFFE ID in the backend's trust domain.
	ErrInvalidIdentity = errors.New("invalid identity")
	// ErrUnavailable: the backend cannot sign right now (Vault unreachable, CA expired); a retry
	// may succeed once an operator or time fixes it.
	ErrUnavailable = errors.New("certificate authority unavailable")
)

// Backend is a certificate authority for workload certificates (X509-SVIDs).
//
// Implementations are safe for concurrent use by many goroutines.
//
// Sign certifies req.CSR's public key for req.ID:
//   - the leaf's only subject alternative name is the URI SAN req.ID; nothing from the CSR's
//     subject or SANs is copied (the identity comes from authentication, never from the CSR);
//   - req.CSR is checked again with CheckCSR (the interface is a trust boundary), a failure wraps
//     ErrInvalidCSR;
//   - req.ID must be a SPIFFE ID with a path in the backend's trust domain, else ErrInvalidIdentity;
//   - req.TTL <= 0 means the backend's default; longer than the backend's maximum is clamped, and
//     a leaf never outlives its issuer;
//   - the result is the chain leaf first, root last, and the root is in TrustBundle.
//
// TrustBundle returns the roots that leaves chain to: more than one while roots overlap during a
// rotation. The returned slices are not shared with the backend and may be kept.
type Backend interface {
	Sign(ctx context.Context, req SignRequest) ([]*x509.Certificate, error)
	TrustBundle(ctx context.Context) (Bundle, error)
}

// SignRequest asks for a workload certificate.
type SignRequest struct {
	CSR *x509.CertificateRequest // parsed, e.g. by ParseCSR
	ID  spiffeid.ID              // the authenticated identity to certify
	TTL time.Duration            // requested lifetime; <= 0 means the backend's default
}

// Bundle is the set of roots of one trust domain.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	Roots       []*x509.Certificate
	// Version increases whenever the set of roots changes; 0 means the backend does not version
	// its bundle (consumers then compare the roots themselves).
	Version uint64
}

// SigningChainer is implemented by backends that can describe the CA chain they sign with without
// signing anything (the local CA). It serves startup logs and expiry metrics; a backend that cannot
// (a Vault role that signs leaves remotely) leaves it out and the chains it returns are used.
type SigningChainer interface {
	// SigningChain returns the issuing CA first and the root last.
	SigningChain(ctx context.Context) ([]*x509.Certificate, error)
}

// Runner is implemented by backends with work of their own in the background (Vault: token
// renewal, re-reading the issuers, renewing an intermediate). The binary runs it beside its
// servers until shutdown; Run returns nil when ctx ends and an error only for a failure that
// should stop kms-adapter.
type Runner interface {
	Run(ctx context.Context) error
}

// RSA keys outside these bounds are refused: below is weak, above costs the CA a lot of CPU per
// signature check for no gain, which a caller could use to slow the signer down.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// ParseCSR parses a DER PKCS#10 request and checks it with CheckCSR, for callers that hold a CSR
// outside any backend. Every failure wraps ErrInvalidCSR.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := DecodeCSR(der)
	if err != nil {
		return nil, err
	}
	if err := CheckCSR(csr); err != nil {
		return nil, err
	}
	return csr, nil
}

// DecodeCSR only parses a DER PKCS#10 request; a failure wraps ErrInvalidCSR. The gRPC edge uses
// it in front of Backend.Sign, which runs CheckCSR itself: checking at both would verify the
// signature twice, a fifth of the local CA's CPU per certificate.
func DecodeCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	return csr, nil
}

// CheckCSR accepts a CSR whose signature verifies (the caller holds the private key) and whose key
// is ECDSA P-256, ECDSA P-384 or RSA of 2048 to 8192 bits. Every failure wraps ErrInvalidCSR.
func CheckCSR(csr *x509.CertificateRequest) error {
	if csr == nil {
		return fmt.Errorf("%w: missing", ErrInvalidCSR)
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s is not allowed (use P-256 or P-384)", ErrInvalidCSR, pub.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits is not allowed (use %d to %d)", ErrInvalidCSR, bits, minRSABits, maxRSABits)
		}
	default:
		return fmt.Errorf("%w: public key algorithm %s is not allowed (use ECDSA P-256/P-384 or RSA >= %d)", ErrInvalidCSR, csr.PublicKeyAlgorithm, minRSABits)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	return nil
}

// CheckIdentity accepts a SPIFFE ID with a path in td: a bare trust-domain ID names the CA itself
// and never a workload. Failures wrap ErrInvalidIdentity.
func CheckIdentity(id spiffeid.ID, td spiffeid.TrustDomain) error {
	switch {
	case id.IsZero():
		return fmt.Errorf("%w: missing SPIFFE ID", ErrInvalidIdentity)
	case !id.MemberOf(td):
		return fmt.Errorf("%w: %s is not in trust domain %s", ErrInvalidIdentity, id, td)
	case id.Path() == "":
		return fmt.Errorf("%w: %s has no path and would name the trust domain itself", ErrInvalidIdentity, id)
	}
	return nil
}

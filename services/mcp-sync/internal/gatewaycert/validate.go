// Package gatewaycert turns the kubernetes.io/tls Secrets that opt in (OptInLabel) into gateway
// certificates for the node agents: it checks each one (PEM, key matches the leaf, not expired),
// asks the API server which of the pods' service accounts may read it (SubjectAccessReview), and
// hands the result to the snapshot manager, which sends a node only the certificates that a pod
// on it may read. A Secret that fails the checks is not published: the agents keep serving its
// last good version, and a metric and a Kubernetes Event on the Secret say why.
package gatewaycert

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// OptInLabel opts a kubernetes.io/tls Secret in, with the value "true". Nothing else is watched:
// the informer's label selector keeps every other Secret out of mcp-sync's memory.
const OptInLabel = "portcullis.dev/gateway-certificate"

// CASuffix is Istio's suffix of the resource name that serves a Secret's ca.crt.
const CASuffix = "-cacert"

// MaxSecretBytes bounds the PEM a Secret may carry (Kubernetes itself caps a Secret at 1 MiB):
// a gateway chain is a few kilobytes, and every agent that may serve it holds a copy.
const MaxSecretBytes = 256 << 10

// Reasons for refusing a Secret: the metric's reason label and the Event's reason.
const (
	ReasonBadPEM      = "BadPEM"
	ReasonKeyMismatch = "KeyMismatch"
	ReasonExpired     = "Expired"
	ReasonBadCA       = "BadCACertificate"
	ReasonTooLarge    = "TooLarge"
)

// Invalid is why a Secret is refused.
type Invalid struct {
	Reason string
	Err    error
}

func (e *Invalid) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *Invalid) Unwrap() error { return e.Err }

func invalid(reason string, format string, args ...any) error {
	return &Invalid{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Validate checks a kubernetes.io/tls Secret at time now and returns the certificate to publish,
// without allowed service accounts. Its error is an *Invalid.
func Validate(s *corev1.Secret, now time.Time) (*mcpv1.GatewayCertificate, error) {
	crt, key, ca := s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey], s.Data["ca.crt"]
	if n := len(crt) + len(key) + len(ca); n > MaxSecretBytes {
		return nil, invalid(ReasonTooLarge, "tls.crt, tls.key and ca.crt hold %d bytes, at most %d are served", n, MaxSecretBytes)
	}
	chain, err := parseCerts(crt)
	if err != nil {
		return nil, invalid(ReasonBadPEM, "tls.crt: %w", err)
	}
	if !keyParses(key) {
		return nil, invalid(ReasonBadPEM, "tls.key: no PEM private key (PKCS#8, PKCS#1 or SEC 1)")
	}
	if _, err := tls.X509KeyPair(crt, key); err != nil {
		return nil, invalid(ReasonKeyMismatch, "tls.key does not match the certificate in tls.crt: %w", err)
	}
	leaf := chain[0]
	if now.After(leaf.NotAfter) {
		return nil, invalid(ReasonExpired, "the certificate in tls.crt expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(ca) > 0 {
		if _, err := parseCerts(ca); err != nil {
			return nil, invalid(ReasonBadCA, "ca.crt: %w", err)
		}
	}
	return &mcpv1.GatewayCertificate{
		Name:             s.Namespace + "/" + s.Name,
		Namespace:        s.Namespace,
		SecretName:       s.Name,
		CertificateChain: bytes.Clone(crt),
		PrivateKey:       bytes.Clone(key),
		CaCertificate:    bytes.Clone(ca),
	}, nil
}

// parseCerts reads one or more PEM certificates and nothing else.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("trailing data that is not PEM")
			}
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a %q PEM block where a CERTIFICATE was expected", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// keyParses reports whether b holds a private key Go can read.
func keyParses(b []byte) bool {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return false
	}
	if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		return true
	}
	if _, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return true
	}
	_, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	return err == nil
}

// Package pemcerts encodes and decodes lists of PEM certificates, the form in which trust
// bundles and certificate chains travel (SDS validation contexts, renewal proofs).
package pemcerts

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
)

// ErrNone means the input held no PEM block at all.
var ErrNone = errors.New("no certificate")

// Encode renders certs as consecutive PEM CERTIFICATE blocks.
func Encode(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // a bytes.Buffer does not fail
	}
	return b.Bytes()
}

// Parse decodes every PEM block of b as a certificate. It returns ErrNone when there is none, and
// x509's own error for a block that is not a certificate.
func Parse(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, ErrNone
	}
	return certs, nil
}

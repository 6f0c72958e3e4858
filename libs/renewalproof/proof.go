// Package renewalproof lets a node agent renew a workload certificate once the workload's token
// has expired. Envoy presents its token once, when it opens an SDS stream that then lives for
// hours, while a Kubernetes projected token lives about one; a renewal at half of a 24h
// certificate would otherwise always fail. As SPIRE's agents do, a renewal is then authenticated
// by the node (its mTLS certificate, checked by citadel) and by proof that the agent holds the key
// of the identity's current, still valid certificate: that key signs the new CSR.
//
// The proof travels in the metadata Struct of Istio's IstioCertificateRequest.
package renewalproof

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
)

// Metadata keys of the proof.
const (
	ChainKey     = "portcullis.dev/renewal-chain"     // PEM: the current leaf, then intermediates
	SignatureKey = "portcullis.dev/renewal-signature" // base64: the current key's signature
)

// domain separates these signatures from any other use of a workload key.
const domain = "portcullis renewal v1\x00"

// ErrInvalid wraps every reason a proof is refused.
var ErrInvalid = errors.New("invalid renewal proof")

func digest(csrDER []byte) []byte {
	h := sha256.New()
	h.Write([]byte(domain))
	h.Write(csrDER)
	return h.Sum(nil)
}

// New proves that the holder of key (the key of chain's leaf) asks for csrDER.
func New(chain []*x509.Certificate, key crypto.Signer, csrDER []byte) (*structpb.Struct, error) {
	if len(chain) == 0 {
		return nil, errors.New("renewal proof: no current certificate")
	}
	sig, err := key.Sign(rand.Reader, digest(csrDER), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing renewal proof: %w", err)
	}
	var presented []*x509.Certificate
	for _, c := range chain {
		if c.IsCA && bytes.Equal(c.RawIssuer, c.RawSubject) {
			continue // the root is the verifier's to supply
		}
		presented = append(presented, c)
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		ChainKey:     structpb.NewStringValue(string(pemcerts.Encode(presented))),
		SignatureKey: structpb.NewStringValue(base64.StdEncoding.EncodeToString(sig)),
	}}, nil
}

// Present reports whether md carries a proof.
func Present(md *structpb.Struct) bool {
	_, ok := md.GetFields()[SignatureKey]
	return ok
}

// Verify checks that md proves possession of the key of a certificate that is valid at now,
// chains to roots and names exactly one SPIFFE ID, over csrDER. It returns that ID and the
// certificate (its NotBefore tells a revoked certificate from a replacement).
func Verify(md *structpb.Struct, csrDER []byte, roots []*x509.Certificate, now time.Time) (spiffeid.ID, *x509.Certificate, error) {
	fields := md.GetFields()
	chain, err := parseChain(fields[ChainKey].GetStringValue())
	if err != nil {
		return spiffeid.ID{}, nil, err
	}
	sig, err := base64.StdEncoding.DecodeString(fields[SignatureKey].GetStringValue())
	if err != nil || len(sig) == 0 {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: signature is not base64", ErrInvalid)
	}
	leaf := chain[0]
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: current certificate: %v", ErrInvalid, err)
	}
	if len(leaf.URIs) != 1 {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: current certificate has %d URI SANs, want 1", ErrInvalid, len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: current certificate: %v", ErrInvalid, err)
	}
	d := digest(csrDER)
	ok := false
	switch pub := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(pub, d, sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(pub, crypto.SHA256, d, sig) == nil
	}
	if !ok {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: signature does not verify with the current certificate's key", ErrInvalid)
	}
	return id, leaf, nil
}

func parseChain(text string) ([]*x509.Certificate, error) {
	chain, err := pemcerts.Parse([]byte(text))
	switch {
	case errors.Is(err, pemcerts.ErrNone):
		return nil, fmt.Errorf("%w: no current certificate", ErrInvalid)
	case err != nil:
		return nil, fmt.Errorf("%w: chain: %v", ErrInvalid, err)
	}
	return chain, nil
}

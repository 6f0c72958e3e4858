package renewalproof

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"math/big"
	"net/url"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
)

// fuzzCert makes a certificate signed by parent (itself when parent is nil).
func fuzzCert(f *testing.F, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		f.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	return cert, key
}

// FuzzVerify feeds Verify the metadata of a renewal request: a chain and a signature that anyone
// holding a node's certificate can send. Accepted means: the proving certificate chains to the
// roots, is valid now, names one SPIFFE ID (the one returned), and its key signed the CSR.
func FuzzVerify(f *testing.F) {
	root, rootKey := fuzzCert(f, &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	u, _ := url.Parse(id)
	leaf, leafKey := fuzzCert(f, &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, root, rootKey)
	csrKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, csrKey)
	if err != nil {
		f.Fatal(err)
	}
	md, err := New([]*x509.Certificate{leaf, root}, leafKey, csrDER)
	if err != nil {
		f.Fatal(err)
	}
	chain, sig := md.Fields[ChainKey].GetStringValue(), md.Fields[SignatureKey].GetStringValue()
	f.Add(chain, sig, csrDER)
	f.Add(chain, sig, csrDER[1:])                                          // another CSR
	f.Add(string(pemcerts.Encode([]*x509.Certificate{root})), sig, csrDER) // the root as the proof
	f.Add(chain+chain, sig, csrDER)
	f.Add("", "", []byte{})
	f.Add(chain, base64.StdEncoding.EncodeToString([]byte("not a signature")), csrDER)
	roots := []*x509.Certificate{root}
	f.Fuzz(func(t *testing.T, chainPEM, sigB64 string, csr []byte) {
		md := &structpb.Struct{Fields: map[string]*structpb.Value{
			ChainKey:     structpb.NewStringValue(chainPEM),
			SignatureKey: structpb.NewStringValue(sigB64),
		}}
		got, cert, err := Verify(md, csr, roots, now)
		if err != nil {
			if cert != nil || !got.IsZero() {
				t.Fatal("Verify returned an identity with its error")
			}
			return
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != got.String() {
			t.Fatalf("accepted %s from a certificate naming %v", got, cert.URIs)
		}
		pool := x509.NewCertPool()
		pool.AddCert(root)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("accepted a certificate that does not chain to the root: %v", err)
		}
		s, _ := base64.StdEncoding.DecodeString(sigB64)
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		if !ok || !ecdsa.VerifyASN1(pub, digest(csr), s) {
			t.Fatal("accepted a signature that does not verify")
		}
	})
}

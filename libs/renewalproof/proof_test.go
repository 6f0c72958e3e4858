package renewalproof

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) ca {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return ca{cert, key}
}

func (c ca) leaf(t *testing.T, id string, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: notAfter,
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func csr(t *testing.T) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

const id = "spiffe://cluster.local/ns/shop/sa/cart"

func TestRoundTrip(t *testing.T) {
	c := newCA(t)
	current, key := c.leaf(t, id, now.Add(time.Hour))
	req := csr(t)
	md, err := New([]*x509.Certificate{current, c.cert}, key, req)
	if err != nil {
		t.Fatal(err)
	}
	if !Present(md) {
		t.Fatal("Present = false for a proof")
	}
	got, leaf, err := Verify(md, req, []*x509.Certificate{c.cert}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != id {
		t.Fatalf("Verify = %s, want %s", got, id)
	}
	if !leaf.Equal(current) {
		t.Fatal("Verify did not return the proving certificate")
	}
}

func TestRefusals(t *testing.T) {
	c, other := newCA(t), newCA(t)
	leaf, key := c.leaf(t, id, now.Add(time.Hour))
	expired, expiredKey := c.leaf(t, id, now.Add(-time.Minute))
	_, strangerKey := c.leaf(t, id, now.Add(time.Hour))
	req := csr(t)
	mustNew := func(chain []*x509.Certificate, k *ecdsa.PrivateKey, der []byte) *structpb.Struct {
		md, err := New(chain, k, der)
		if err != nil {
			t.Fatal(err)
		}
		return md
	}
	cases := map[string]struct {
		md    *structpb.Struct
		roots []*x509.Certificate
	}{
		"another csr":           {mustNew([]*x509.Certificate{leaf}, key, csr(t)), []*x509.Certificate{c.cert}},
		"key of another holder": {mustNew([]*x509.Certificate{leaf}, strangerKey, req), []*x509.Certificate{c.cert}},
		"expired certificate":   {mustNew([]*x509.Certificate{expired}, expiredKey, req), []*x509.Certificate{c.cert}},
		"untrusted root":        {mustNew([]*x509.Certificate{leaf}, key, req), []*x509.Certificate{other.cert}},
		"no proof":              {&structpb.Struct{}, []*x509.Certificate{c.cert}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, _, err := Verify(tc.md, req, tc.roots, now); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Verify = %v, want ErrInvalid", err)
			}
		})
	}
	if Present(&structpb.Struct{}) {
		t.Fatal("Present = true without a proof")
	}
}

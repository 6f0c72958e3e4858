package secretstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// testIssuer makes real certificates: an ECDSA P-256 CA and leaves under it, so that records
// have the sizes they have in production (leaf and CA: a 2-certificate chain).
type testIssuer struct {
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

func newTestIssuer(t testing.TB) *testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "portcullis test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testIssuer{ca: ca, caKey: key}
}

// record makes a record for id with a fresh key, a leaf like citadel's, and pods.
func (is *testIssuer) record(t testing.TB, id spiffeid.ID, pods ...Pod) Record {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, URIs: []*url.URL{id.URL()}, NotBefore: now, NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, is.ca, key.Public(), is.caKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Record{ID: id, Chain: [][]byte{der, is.ca.Raw}, Key: pkcs8, Pods: pods, ResourceNames: []string{"default", "ROOTCA"}}
}

func testID(i int) spiffeid.ID {
	return spiffeid.RequireFromString(fmt.Sprintf("spiffe://cluster.local/ns/shop/sa/svc-%d", i))
}

func testPod(i int) Pod {
	return Pod{Namespace: "shop", Name: fmt.Sprintf("svc-%d-7d9f", i), UID: fmt.Sprintf("0b5e6c1a-%04d-4f2e-9a57-1c0ffee00000", i)}
}

func testKey(t testing.TB, b byte) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

func TestParseNames(t *testing.T) {
	got := parseNames(" key/shop/a, kubernetes://gw,,kubernetes://gw-cacert,key/shop/a ")
	want := []string{"key/shop/a", "kubernetes://gw", "kubernetes://gw-cacert"}
	if !slices.Equal(got, want) {
		t.Fatalf("parseNames: %q, want %q", got, want)
	}
	if parseNames("") != nil {
		t.Fatal("parseNames(\"\") is not empty")
	}
}

// TestResourcesApply: each response is the whole state of the names' stream; what it describes
// is digests, serials and names, never the material.
func TestResourcesApply(t *testing.T) {
	crtPEM, keyPEM, cert := selfSigned(t)
	inline := func(b []byte) *core.DataSource {
		return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
	}
	generic := &tlsv3.Secret{Name: "key/shop/web", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secrets: map[string]*core.DataSource{"token": inline([]byte("s3cret"))}}}}
	tlsCert := &tlsv3.Secret{Name: "kubernetes://gw", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(crtPEM), PrivateKey: inline(keyPEM)}}}
	ca := &tlsv3.Secret{Name: "kubernetes://gw-cacert", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(crtPEM)}}}
	unasked := &tlsv3.Secret{Name: "key/shop/other", Type: generic.Type}

	r := newResources([]string{"key/shop/web", "kubernetes://gw", "kubernetes://gw-cacert"})
	if err := r.apply(map[string]*tlsv3.Secret{generic.Name: generic, tlsCert.Name: tlsCert, ca.Name: ca, unasked.Name: unasked}); err != nil {
		t.Fatal(err)
	}
	st := r.status()
	if len(st.Resources) != 3 || st.ResourcesUpdates != 1 {
		t.Fatalf("status %+v, want the three names asked for after one update", st)
	}
	if g := st.Resources["key/shop/web"]; g.Kind != "generic_secret" || g.SHA256["token"] != sha256Hex([]byte("s3cret")) {
		t.Errorf("generic secret described as %+v", g)
	}
	if c := st.Resources["kubernetes://gw"]; c.Kind != "tls_certificate" || c.Serial != cert.SerialNumber.Text(16) ||
		!slices.Equal(c.DNSNames, []string{"gw.example.com"}) || c.Chain != 1 {
		t.Errorf("tls certificate described as %+v", c)
	}
	if v := st.Resources["kubernetes://gw-cacert"]; v.Kind != "validation_context" || !slices.Equal(v.CASHA256, []string{sha256Hex(cert.Raw)}) {
		t.Errorf("validation context described as %+v", v)
	}

	// A response without the KeySecret: it was taken away.
	if err := r.apply(map[string]*tlsv3.Secret{tlsCert.Name: tlsCert, ca.Name: ca}); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.status().Resources["key/shop/web"]; ok {
		t.Error("a name missing from a response is still held")
	}

	// A response that does not decode changes nothing; the stream's error is reported.
	bad := &tlsv3.Secret{Name: "kubernetes://gw", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(crtPEM), PrivateKey: inline([]byte("not a key"))}}}
	if err := r.apply(map[string]*tlsv3.Secret{bad.Name: bad}); err == nil {
		t.Fatal("a tls_certificate with a bad key was applied")
	}
	if st := r.status(); len(st.Resources) != 2 || st.ResourcesUpdates != 2 {
		t.Errorf("after a bad response: %+v, want the two names of the last good one", st)
	}
}

func selfSigned(t *testing.T) (crtPEM, keyPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0x5eed), Subject: pkix.Name{CommonName: "gw"}, DNSNames: []string{"gw.example.com"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	if cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), cert
}

package sdsclient_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

const workloadID = "spiffe://portcullis.test/ns/shop/sa/payments"

type keyPair struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
}

// newKeyPair makes a self-signed certificate, usable both as a workload leaf and as a root.
func newKeyPair(t *testing.T, uri string) keyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "test"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		URIs:                  []*url.URL{u},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

func tlsCertificateSecret(name string, chain, key []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(chain), PrivateKey: inline(key),
	}}}
}

func validationSecret(name string, trustedCA []byte) *tlsv3.Secret {
	vc := &tlsv3.CertificateValidationContext{}
	if trustedCA != nil {
		vc.TrustedCa = inline(trustedCA)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}
}

func requireErrContains(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not contain %q", err, p)
		}
	}
}

func TestCertificate(t *testing.T) {
	kp := newKeyPair(t, workloadID)
	cert, err := sdsclient.Certificate(tlsCertificateSecret("default", kp.certPEM, kp.keyPEM))
	if err != nil {
		t.Fatalf("Certificate: %v", err)
	}
	if cert.Leaf == nil {
		t.Fatal("Certificate did not set Leaf")
	}
	if !cert.Leaf.Equal(kp.cert) || len(cert.Leaf.URIs) != 1 || cert.Leaf.URIs[0].String() != workloadID {
		t.Fatalf("Leaf = %v, want the certificate for %s", cert.Leaf.URIs, workloadID)
	}
	if cert.PrivateKey == nil {
		t.Fatal("no private key")
	}
}

func TestCertificateRefusesBadSecrets(t *testing.T) {
	kp, other := newKeyPair(t, workloadID), newKeyPair(t, workloadID)
	t.Run("validation context", func(t *testing.T) {
		_, err := sdsclient.Certificate(validationSecret("ROOTCA", kp.certPEM))
		requireErrContains(t, err, `"ROOTCA"`, "not a tls_certificate")
	})
	t.Run("empty secret", func(t *testing.T) {
		_, err := sdsclient.Certificate(&tlsv3.Secret{Name: "default"})
		requireErrContains(t, err, `"default"`)
	})
	t.Run("bad pem", func(t *testing.T) {
		_, err := sdsclient.Certificate(tlsCertificateSecret("default", []byte("not pem"), kp.keyPEM))
		requireErrContains(t, err, "default")
	})
	t.Run("key of another certificate", func(t *testing.T) {
		_, err := sdsclient.Certificate(tlsCertificateSecret("default", kp.certPEM, other.keyPEM))
		requireErrContains(t, err, "default")
	})
}

func TestRoots(t *testing.T) {
	a, b := newKeyPair(t, "spiffe://portcullis.test"), newKeyPair(t, "spiffe://portcullis.test")
	roots, err := sdsclient.Roots(validationSecret("ROOTCA", append(append([]byte{}, a.certPEM...), b.certPEM...)))
	if err != nil {
		t.Fatalf("Roots: %v", err)
	}
	if len(roots) != 2 || !roots[0].Equal(a.cert) || !roots[1].Equal(b.cert) {
		t.Fatalf("Roots returned %d certificates, want both roots in order", len(roots))
	}
}

func TestRootsRefusesBadSecrets(t *testing.T) {
	kp := newKeyPair(t, workloadID)
	garbageCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")})
	for name, tc := range map[string]struct {
		secret *tlsv3.Secret
		want   []string
	}{
		"tls certificate":   {tlsCertificateSecret("default", kp.certPEM, kp.keyPEM), []string{`"default"`, "not a validation_context"}},
		"no trusted ca":     {validationSecret("ROOTCA", nil), []string{`"ROOTCA"`, "no trusted ca"}},
		"empty trusted ca":  {validationSecret("ROOTCA", []byte{}), []string{`"ROOTCA"`, "no trusted ca"}},
		"not pem":           {validationSecret("ROOTCA", []byte("-----BEGIN nonsense")), []string{`"ROOTCA"`, "no trusted ca"}},
		"bad certificate":   {validationSecret("ROOTCA", garbageCert), []string{`"ROOTCA"`, "parsing trusted ca"}},
		"good then garbage": {validationSecret("ROOTCA", append(append([]byte{}, kp.certPEM...), garbageCert...)), []string{"parsing trusted ca"}},
	} {
		t.Run(name, func(t *testing.T) {
			roots, err := sdsclient.Roots(tc.secret)
			requireErrContains(t, err, tc.want...)
			if roots != nil {
				t.Errorf("Roots returned %d certificates with the error", len(roots))
			}
		})
	}
}

package gatewaycert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var now = time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)

type keyPEM struct {
	key *ecdsa.PrivateKey
	pem []byte
}

func newKey(t *testing.T) keyPEM {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return keyPEM{k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b})}
}

// selfSigned returns a certificate for key valid until notAfter.
func selfSigned(t *testing.T, key keyPEM, notAfter time.Time) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "gw"},
		NotBefore: now.Add(-time.Hour), NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.key.PublicKey, key.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func secret(crt, key, ca []byte) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "gw-tls"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key}}
	if ca != nil {
		s.Data["ca.crt"] = ca
	}
	return s
}

func TestValidate(t *testing.T) {
	k, other := newKey(t), newKey(t)
	good := selfSigned(t, k, now.Add(time.Hour))
	ca := selfSigned(t, other, now.Add(time.Hour))

	gc, err := Validate(secret(good, k.pem, ca), now)
	if err != nil {
		t.Fatal(err)
	}
	if gc.GetName() != "shop/gw-tls" || gc.GetNamespace() != "shop" || gc.GetSecretName() != "gw-tls" ||
		string(gc.GetCertificateChain()) != string(good) || string(gc.GetPrivateKey()) != string(k.pem) || string(gc.GetCaCertificate()) != string(ca) {
		t.Fatalf("published %v", gc)
	}
	if _, err := Validate(secret(good, k.pem, nil), now); err != nil {
		t.Fatalf("without ca.crt: %v", err)
	}

	for name, tc := range map[string]struct {
		s    *corev1.Secret
		want string
	}{
		"certificate not PEM":       {secret([]byte("junk"), k.pem, nil), ReasonBadPEM},
		"certificate trailing junk": {secret(append(append([]byte{}, good...), "junk"...), k.pem, nil), ReasonBadPEM},
		"key in tls.crt":            {secret(k.pem, k.pem, nil), ReasonBadPEM},
		"key not PEM":               {secret(good, []byte("junk"), nil), ReasonBadPEM},
		"no key":                    {secret(good, nil, nil), ReasonBadPEM},
		"key of another cert":       {secret(good, other.pem, nil), ReasonKeyMismatch},
		"expired":                   {secret(selfSigned(t, k, now.Add(-time.Second)), k.pem, nil), ReasonExpired},
		"ca.crt not PEM":            {secret(good, k.pem, []byte("junk")), ReasonBadCA},
		"too large":                 {secret(good, k.pem, make([]byte, MaxSecretBytes)), ReasonTooLarge},
	} {
		_, err := Validate(tc.s, now)
		var inv *Invalid
		if !errors.As(err, &inv) || inv.Reason != tc.want {
			t.Errorf("%s: %v, want reason %s", name, err, tc.want)
		}
	}
}

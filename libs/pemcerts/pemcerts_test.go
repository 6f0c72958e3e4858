package pemcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"testing"
	"time"
)

func cert(t *testing.T, serial int64) *x509.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestRoundTripKeepsOrder(t *testing.T) {
	in := []*x509.Certificate{cert(t, 1), cert(t, 2), cert(t, 3)}
	out, err := Parse(Encode(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("got %d certificates, want %d", len(out), len(in))
	}
	for i := range in {
		if !out[i].Equal(in[i]) {
			t.Fatalf("certificate %d changed or moved", i)
		}
	}
}

func TestParseRefusals(t *testing.T) {
	if _, err := Parse(nil); !errors.Is(err, ErrNone) {
		t.Fatalf("empty input: %v, want ErrNone", err)
	}
	if _, err := Parse([]byte("not pem")); !errors.Is(err, ErrNone) {
		t.Fatalf("non-PEM input: %v, want ErrNone", err)
	}
	bad := []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	if _, err := Parse(append(Encode([]*x509.Certificate{cert(t, 1)}), bad...)); err == nil || errors.Is(err, ErrNone) {
		t.Fatalf("a block that is not a certificate: %v, want x509's error", err)
	}
}

package gatewaycerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

func TestParse(t *testing.T) {
	for name, want := range map[string]Ref{
		"kubernetes://gw-tls":             {Namespace: "caller", Secret: "gw-tls"},
		"kubernetes://shop/gw-tls":        {Namespace: "shop", Secret: "gw-tls"},
		"kubernetes://shop/gw-tls-cacert": {Namespace: "shop", Secret: "gw-tls-cacert"},
	} {
		got, err := Parse(name, "caller")
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", name, got, err, want)
		}
	}
	for _, name := range []string{"kubernetes://", "kubernetes:///x", "kubernetes://ns/", "kubernetes://a/b/c", "file://x", "gw-tls"} {
		if _, err := Parse(name, "caller"); !errors.Is(err, ErrBadName) {
			t.Errorf("Parse(%q): %v, want ErrBadName", name, err)
		}
	}
}

type pair struct{ crt, key []byte }

func newPair(t *testing.T, serial int64) pair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "gw"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(k)
	return pair{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})}
}

func resource(t *testing.T, name string, p pair, ca []byte, allowed ...string) *anypb.Any {
	t.Helper()
	a, err := anypb.New(&mcpv1.GatewayCertificate{Name: "shop/" + name, Namespace: "shop", SecretName: name,
		CertificateChain: p.crt, PrivateKey: p.key, CaCertificate: ca, AllowedServiceAccounts: allowed})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func served(t *testing.T, s *Store, name, ns, sa string) (*tlsv3.Secret, string) {
	t.Helper()
	a, v, err := s.Secret(name, ns, sa)
	if err != nil {
		t.Fatalf("%s as %s/%s: %v", name, ns, sa, err)
	}
	sec := &tlsv3.Secret{}
	if err := a.UnmarshalTo(sec); err != nil {
		t.Fatal(err)
	}
	if sec.GetName() != name {
		t.Fatalf("resource named %q, asked %q", sec.GetName(), name)
	}
	return sec, v
}

func TestStoreServesAllowedCallersAndKeepsLastGood(t *testing.T) {
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	changes := make(chan struct{}, 10)
	cancel := s.Subscribe("shop", "gateway", func() { changes <- struct{}{} })
	others := make(chan struct{}, 10)
	defer s.Subscribe("shop", "web", func() { others <- struct{}{} })()
	defer cancel()
	v1, ca := newPair(t, 1), newPair(t, 99)
	apply := func(rs ...*anypb.Any) {
		t.Helper()
		if err := s.Apply(rs); err != nil {
			t.Fatal(err)
		}
	}
	apply(resource(t, "gw-tls", v1, ca.crt, "shop/gateway", "edge/ingress"))
	<-changes

	sec, ver1 := served(t, s, "kubernetes://gw-tls", "shop", "gateway")
	if string(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != string(v1.crt) ||
		string(sec.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != string(v1.key) {
		t.Fatal("tls_certificate is not the Secret's chain and key as inline bytes")
	}
	// Another namespace names the namespace; its own service account must be the allowed one.
	served(t, s, "kubernetes://shop/gw-tls", "edge", "ingress")
	caSec, _ := served(t, s, "kubernetes://shop/gw-tls-cacert", "edge", "ingress")
	if string(caSec.GetValidationContext().GetTrustedCa().GetInlineBytes()) != string(ca.crt) {
		t.Fatal("-cacert is not the Secret's ca.crt")
	}
	for _, tc := range []struct {
		name, ns, sa string
		want         error
	}{
		{"kubernetes://gw-tls", "shop", "web", ErrNotAllowed},
		{"kubernetes://shop/gw-tls", "edge", "gateway", ErrNotAllowed},
		{"kubernetes://gw-tls", "edge", "ingress", ErrNotFound}, // edge/gw-tls does not exist
		{"kubernetes://shop/missing", "shop", "gateway", ErrNotFound},
		{"kubernetes://", "shop", "gateway", ErrBadName},
	} {
		if _, _, err := s.Secret(tc.name, tc.ns, tc.sa); !errors.Is(err, tc.want) {
			t.Errorf("%s as %s/%s: %v, want %v", tc.name, tc.ns, tc.sa, err, tc.want)
		}
	}

	// A broken update keeps the last good version; a good one replaces it.
	broken := v1
	broken.key = newPair(t, 2).key
	apply(resource(t, "gw-tls", broken, ca.crt, "shop/gateway", "edge/ingress"))
	if _, v := served(t, s, "kubernetes://gw-tls", "shop", "gateway"); v != ver1 {
		t.Fatal("a certificate with a mismatched key replaced the last good one")
	}
	// A broken update that also revokes a service account: the revocation applies.
	apply(resource(t, "gw-tls", broken, ca.crt, "shop/gateway"))
	<-changes
	if _, _, err := s.Secret("kubernetes://shop/gw-tls", "edge", "ingress"); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("revoked edge/ingress: %v, want ErrNotAllowed", err)
	}
	if _, v := served(t, s, "kubernetes://gw-tls", "shop", "gateway"); v != ver1 {
		t.Fatal("the last good certificate is not served after a broken update")
	}
	v2 := newPair(t, 3)
	apply(resource(t, "gw-tls", v2, ca.crt, "shop/gateway"))
	<-changes
	sec, ver2 := served(t, s, "kubernetes://gw-tls", "shop", "gateway")
	if ver2 == ver1 || string(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != string(v2.crt) {
		t.Fatal("the rotated certificate is not served")
	}

	// Withdrawn: gone.
	apply()
	<-changes
	if _, _, err := s.Secret("kubernetes://gw-tls", "shop", "gateway"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after withdrawal: %v, want ErrNotFound", err)
	}
	// shop/web was never allowed: none of this concerned its streams.
	if n := len(others); n != 0 {
		t.Fatalf("a service account never allowed was told of %d changes", n)
	}
}

package sds

import (
	"crypto/x509"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

func TestRenderCacheRendersEachBundleAndCertificateOnce(t *testing.T) {
	var c renderCache
	renders := 0
	r := func(v string) func() (built, error) {
		return func() (built, error) { renders++; return render(&tlsv3.Secret{Name: v}, v) }
	}
	a, b := &x509.Certificate{Raw: []byte("a")}, &x509.Certificate{Raw: []byte("b")}
	for range 3 {
		if got, _ := c.bundle([]*x509.Certificate{a}, r("a")); got.version != "a" {
			t.Fatalf("bundle version %q, want a", got.version)
		}
	}
	if got, _ := c.bundle([]*x509.Certificate{a, b}, r("ab")); got.version != "ab" {
		t.Fatalf("after a bundle change: version %q, want ab", got.version)
	}
	if renders != 2 {
		t.Fatalf("%d bundle renders, want 2", renders)
	}

	renders = 0
	id1, id2 := spiffeid.RequireFromString("spiffe://td/ns/a/sa/x"), spiffeid.RequireFromString("spiffe://td/ns/a/sa/y")
	c1, c1b, c2 := &secrets.Certificate{ID: id1}, &secrets.Certificate{ID: id1}, &secrets.Certificate{ID: id2}
	steps := []struct {
		name string
		cert *secrets.Certificate
		want string
	}{
		{DefaultName, c1, "c1"}, {DefaultName, c1, "c1"}, // cached
		{id1.String(), c1, "c1 by id"}, // another resource name is another secret
		{DefaultName, c2, "c2"},        // another identity
		{DefaultName, c1b, "c1b"},      // a re-issued certificate
		{DefaultName, c2, "c2"},        // cached
	}
	for _, s := range steps {
		if got, _ := c.certificate(s.name, s.cert, r(s.want)); got.version != s.want {
			t.Fatalf("certificate %s/%s: version %q, want %q", s.cert.ID, s.name, got.version, s.want)
		}
	}
	if renders != 4 {
		t.Fatalf("%d certificate renders, want 4", renders)
	}
}

package jwtbundle

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"testing"

	"github.com/go-jose/go-jose/v4"
	spiffejwt "github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// FuzzParse feeds Parse what kms-adapter could answer. An accepted bundle is for the trust domain,
// within MaxJWKSBytes, and readable by go-spiffe with as many keys as it reports.
func FuzzParse(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	good, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Use: "jwt-svid"}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("example.org", good)
	f.Add("evil.org", good)
	f.Add("example.org", []byte(`{"keys":[]}`))
	f.Add("example.org", []byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}`))
	f.Add("example.org", []byte(`not json`))
	f.Fuzz(func(t *testing.T, domain string, jwks []byte) {
		b, err := Parse(td, &kmsv1.GetJWTBundleResponse{TrustDomain: domain, Jwks: jwks})
		if err != nil {
			if b != nil {
				t.Fatal("a refusal returned a bundle")
			}
			return
		}
		if domain != td.Name() || len(jwks) > MaxJWKSBytes {
			t.Fatalf("accepted a bundle for %q of %d bytes", domain, len(jwks))
		}
		parsed, err := spiffejwt.Parse(td, b.JWKS)
		if err != nil || len(parsed.JWTAuthorities()) != b.Keys || b.Keys == 0 {
			t.Fatalf("accepted a bundle go-spiffe reads as %v (err %v), reported %d keys", parsed, err, b.Keys)
		}
	})
}

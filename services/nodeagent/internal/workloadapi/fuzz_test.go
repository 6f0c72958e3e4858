package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
)

type staticJWKS []byte

func (s staticJWKS) JWTBundle(context.Context) (string, []byte, uint64, error) {
	return "cluster.local", s, 1, nil
}

// FuzzValidate: whatever the token and audience, validation answers InvalidArgument (or
// accepts a token that really is a valid JWT-SVID, which random input never is) and never
// panics.
func FuzzValidate(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k", Algorithm: "ES256"}}})
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	bundles := NewJWTBundles(staticJWKS(jwks), td, 0, slog.New(slog.DiscardHandler))
	if err := bundles.Refresh(context.Background()); err != nil {
		f.Fatal(err)
	}
	attrs, err := NewAttributes(AttributesConfig{Rules: []AttributeRule{{Path: DefaultPathTemplate}}}, td, nil)
	if err != nil {
		f.Fatal(err)
	}
	s := New(Config{Bundles: bundles, Attributes: attrs, TrustDomain: td, Logger: slog.New(slog.DiscardHandler)})
	f.Add("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJzcGlmZmU6Ly9jbHVzdGVyLmxvY2FsL25zL2Evc2EvYiIsImF1ZCI6IngifQ.AAAA", "x")
	f.Add("eyJhbGciOiJub25lIn0.e30.", "x")
	f.Add(strings.Repeat("a", MaxTokenBytes+1), "x")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, token, audience string) {
		_, err := s.validate(token, audience)
		if err == nil {
			t.Fatalf("validated %q for %q", token, audience)
		}
		if ae, ok := err.(apiError); !ok || ae.code != codes.InvalidArgument {
			t.Fatalf("validate(%q, %q) = %v, want an InvalidArgument", token, audience, err)
		}
	})
}

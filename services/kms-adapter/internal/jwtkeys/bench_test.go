package jwtkeys_test

import (
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/jwtkeys"
)

func benchManager(b *testing.B, alg jose.SignatureAlgorithm) *jwtkeys.Manager {
	b.Helper()
	m, err := jwtkeys.Open(jwtkeys.Config{Dir: b.TempDir(), TrustDomain: td, Algorithm: alg, KeyTTL: keyTTL, MaxTokenTTL: maxToken,
		Clock: clock.RealClock{}, Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkSign is the in-process ceiling of SignJWTSVID: claims, JWS and the signature, no
// network.
func BenchmarkSign(b *testing.B) {
	for _, alg := range jwtkeys.Algorithms {
		b.Run(string(alg), func(b *testing.B) {
			m := benchManager(b, alg)
			req := jwtkeys.SignRequest{ID: workload, Audiences: []string{"orders"}, TTL: 5 * time.Minute}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.Sign(req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkVerify is the ceiling of an offline validation: go-spiffe's ParseAndValidate of an
// ES256 token against the bundle, what ValidateJWTSVID does per call at best.
func BenchmarkVerify(b *testing.B) {
	m := benchManager(b, jose.ES256)
	tok, err := m.Sign(jwtkeys.SignRequest{ID: workload, Audiences: []string{"orders"}, TTL: 5 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	raw, err := m.Bundle()
	if err != nil {
		b.Fatal(err)
	}
	bundle, err := jwtbundle.Parse(td, raw.JWKS)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := jwtsvid.ParseAndValidate(tok.Token, bundle, []string{"orders"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

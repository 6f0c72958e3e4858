package grpcapi

import (
	"testing"
)

// BenchmarkCreateCertificateCacheHit measures the hot path: every call carries the same CSR and
// token, so after the first call each one is a cache hit (mTLS gRPC, token verification, pod
// checks and CSR parsing included; no kms-adapter call).
func BenchmarkCreateCertificateCacheHit(b *testing.B) {
	h := newHarness(b, harnessConfig{})
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	csr, _ := newCSR(b)
	if _, err := createCert(c, tok, csr, 0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := createCert(c, tok, csr, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	if n := h.kms.Signs.Load(); n != 1 {
		b.Fatalf("%d kms calls, want 1", n)
	}
}

// BenchmarkMintJWTSVID is a JWT-SVID minted through citadel (there is no cache for JWTs in
// citadel: every call is a miss): mTLS gRPC from the agent, token verification, the pod checks,
// then kms-adapter's SignJWTSVID over mTLS gRPC (the stand-in of package kmstest, which signs
// ES256 with go-jose as kms-adapter does).
func BenchmarkMintJWTSVID(b *testing.B) {
	h := newHarness(b, harnessConfig{})
	c, tok := h.jwtClient("node-a"), h.token(cartWorkload)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := mint(c, tok, nil, 0, "orders"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	if n := h.kms.JWT.Signs.Load(); n != int64(b.N) {
		b.Fatalf("%d kms calls for %d mints", n, b.N)
	}
}

package e2e

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"
)

// BenchmarkCitadelMintJWTSVID: JWT-SVIDs/s minted through citadel and the real kms-adapter (ES256,
// its default) over mTLS gRPC. Citadel caches no JWT-SVID, so every call is a miss that
// kms-adapter signs; the ceiling is kms-adapter's jwtkeys BenchmarkSign. The first token is
// checked with go-spiffe against the JWT bundle citadel serves.
func BenchmarkCitadelMintJWTSVID(b *testing.B) {
	_, ctx := benchSetup(b)
	var clients []cav1.JWTSVIDServiceClient
	for n := range benchAgents {
		conn, err := dialCitadel(benchState.s, fmt.Sprintf("bench-jwt-agent-%d", n))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		clients = append(clients, cav1.NewJWTSVIDServiceClient(conn))
	}
	req := &cav1.MintJWTSVIDRequest{Audiences: []string{"orders"}}
	first, err := clients[0].MintJWTSVID(ctx, req)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := clients[0].GetJWTBundle(ctx, &cav1.GetJWTBundleRequest{})
	if err != nil {
		b.Fatal(err)
	}
	bundle, err := jwtbundle.Parse(spiffeid.RequireTrustDomainFromString(resp.GetTrustDomain()), resp.GetJwks())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(first.GetToken(), bundle, []string{"orders"}); err != nil {
		b.Fatalf("a JWT-SVID from the stack does not verify with its bundle: %v", err)
	}
	var worker atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := clients[worker.Add(1)%benchAgents]
		for pb.Next() {
			if _, err := c.MintJWTSVID(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

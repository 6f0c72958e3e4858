package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// The benchmarks share one stack, started on first use and stopped by TestMain.
var (
	benchOnce  sync.Once
	benchState struct {
		s     *stack.Stack
		ca    []authv1.IstioCertificateServiceClient // one connection per simulated node agent
		ctx   context.Context
		error error
	}
	benchCleanup []func()
)

// benchAgents is how many node agents (connections) the benchmarks simulate.
const benchAgents = 4

func benchSetup(b *testing.B) ([]authv1.IstioCertificateServiceClient, context.Context) {
	benchOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pc-bench-")
		if err != nil {
			benchState.error = err
			return
		}
		// The benchmarks measure how fast citadel can sign and serve, so its per-node signing
		// limit (which would refuse BenchmarkCitadelSignMiss with ResourceExhausted after the
		// burst) is off; the limit has its own tests.
		s, err := stack.Start(context.Background(), stack.Options{BinDir: binDir, Dir: dir,
			Manifests: "../examples/cluster", Nodes: []string{"node-a"},
			Extra: map[string][]string{stack.Citadel: {"-node-sign-rate", "0"}}})
		if err != nil {
			benchState.error = err
			return
		}
		benchCleanup = append(benchCleanup, func() { _ = s.Stop(); os.RemoveAll(dir) })
		benchState.s = s
		tok, err := s.Token(pod(b, "shop/frontend-0"), time.Hour)
		if err != nil {
			benchState.error = err
			return
		}
		benchState.ctx = metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
		// Citadel serves many node agents, each on its own connection; so do the benchmarks.
		for n := range benchAgents {
			conn, err := dialCitadel(s, fmt.Sprintf("bench-agent-%d", n))
			if err != nil {
				benchState.error = err
				return
			}
			benchCleanup = append(benchCleanup, func() { conn.Close() })
			benchState.ca = append(benchState.ca, authv1.NewIstioCertificateServiceClient(conn))
		}
	})
	if benchState.error != nil {
		b.Fatal(benchState.error)
	}
	return benchState.ca, benchState.ctx
}

// BenchmarkCitadelSignMiss: CSRs/s through citadel + kms-adapter (local CA) over mTLS gRPC,
// every request a new key, so every one is a cache miss that kms-adapter signs.
func BenchmarkCitadelSignMiss(b *testing.B) {
	agents, ctx := benchSetup(b)
	csrs := make([]string, b.N)
	for i := range csrs {
		csrs[i] = newCSR(b)
	}
	var next, worker atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ca := agents[worker.Add(1)%benchAgents]
		for pb.Next() {
			i := next.Add(1) - 1
			if _, err := ca.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csrs[i], ValidityDuration: 3600}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "csr/s")
}

// BenchmarkCitadelCacheHit: the same CSR again and again: citadel answers from its cache.
func BenchmarkCitadelCacheHit(b *testing.B) {
	agents, ctx := benchSetup(b)
	req := &authv1.IstioCertificateRequest{Csr: newCSR(b), ValidityDuration: 3600}
	if _, err := agents[0].CreateCertificate(ctx, req); err != nil {
		b.Fatal(err)
	}
	var worker atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ca := agents[worker.Add(1)%benchAgents]
		for pb.Next() {
			if _, err := ca.CreateCertificate(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkSignCeiling is the in-process ceiling for BenchmarkCitadelSignMiss: parse a DER CSR,
// verify its signature and sign a leaf with an ECDSA P-256 intermediate, with crypto/x509 only.
func BenchmarkSignCeiling(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	issuer, _ := x509.ParseCertificate(der)
	csrs := make([][]byte, 256)
	for i := range csrs {
		block, _ := pem.Decode([]byte(newCSR(b)))
		csrs[i] = block.Bytes
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/frontend")
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			csr, err := x509.ParseCertificateRequest(csrs[i%int64(len(csrs))])
			if err == nil {
				err = csr.CheckSignature()
			}
			if err != nil {
				b.Error(err)
				return
			}
			leaf := &x509.Certificate{SerialNumber: big.NewInt(i), URIs: []*url.URL{id},
				NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
				KeyUsage:    x509.KeyUsageDigitalSignature,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
			if _, err := x509.CreateCertificate(rand.Reader, leaf, issuer, csr.PublicKey, key); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "csr/s")
}

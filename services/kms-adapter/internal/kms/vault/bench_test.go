package vault_test

import (
	"encoding/pem"
	"net/http"
	"testing"

	"github.com/hashicorp/vault/api"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/vaulttest"
)

// benchParallelism is goroutines per GOMAXPROCS: enough concurrent requests to keep Vault busy,
// as citadel replicas with many cache misses would.
const benchParallelism = 16

// BenchmarkSignatures measures signatures per second, in one run against one Vault, three ways:
// Vault's own pki/sign called directly over HTTP (the ceiling of leaf mode), kms-adapter over its
// gRPC API as citadel calls it in leaf mode (Vault signs), and in intermediate mode (kms-adapter
// signs with its Vault-signed intermediate). The load client, its concurrency and the CSRs are the
// same for all three. kms-adapter runs in this process; Vault is its own process; they share the
// machine's cores.
func BenchmarkSignatures(b *testing.B) {
	srv := vaulttest.Start(b, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	csrs := make([][]byte, 64)
	for i := range csrs {
		csrs[i] = kmstest.CSRDER(b, kmstest.NewKey(b))
	}

	b.Run("vault-direct", func(b *testing.B) {
		cfg := api.DefaultConfig()
		cfg.Address = srv.Addr
		cfg.HttpClient.Transport.(*http.Transport).MaxIdleConnsPerHost = 256
		client, err := api.NewClient(cfg)
		if err != nil {
			b.Fatal(err)
		}
		client.SetToken(srv.RootToken)
		pemCSRs := make([]string, len(csrs))
		for i, der := range csrs {
			pemCSRs[i] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		}
		load(b, func(i int) error {
			_, err := client.Logical().Write(pki.Mount+"/sign/"+pki.Role, map[string]any{
				"csr": pemCSRs[i%len(pemCSRs)], "uri_sans": id.String(), "ttl": "3600s",
				"exclude_cn_from_sans": true, "format": "pem",
			})
			return err
		})
	})
	for _, mode := range []string{"leaf", "intermediate"} {
		b.Run("kms-adapter-"+mode, func(b *testing.B) {
			k := startKMSAdapter(b, srv, mode)
			load(b, func(i int) error {
				_, err := k.client.SignCertificate(b.Context(), &kmsv1.SignCertificateRequest{
					Csr: csrs[i%len(csrs)], SpiffeId: id.String(), TtlSeconds: 3600})
				return err
			})
		})
	}
}

func load(b *testing.B, sign func(i int) error) {
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if err := sign(i); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

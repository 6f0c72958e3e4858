package local_test

import (
	"context"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
)

// BenchmarkSign is the in-process ceiling of one signature: what grpcapi does per request minus
// the network and TLS, i.e. parse the DER CSR (kms.DecodeCSR) and Sign, which checks the CSR's key
// and signature (CheckSignature) and signs the leaf with the intermediate.
func BenchmarkSign(b *testing.B) {
	ca := newCA(b, config(b.TempDir(), clock.RealClock{}))
	der := kmstest.CSRDER(b, kmstest.NewKey(b))
	signOnce := func() error {
		csr, err := kms.DecodeCSR(der)
		if err != nil {
			return err
		}
		_, err = ca.Sign(context.Background(), kms.SignRequest{CSR: csr, ID: id, TTL: time.Hour})
		return err
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := signOnce(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := signOnce(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

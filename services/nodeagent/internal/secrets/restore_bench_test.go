package secrets

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BenchmarkRestore is a restarted agent's start with the state of 1,000 identities (100 with
// -short): read, parse, check against key and bundle, and schedule every one. Nothing is signed.
func BenchmarkRestore(b *testing.B) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	clk := newRecordingClock()
	ca := newTestCA(b, clk)
	st := openTestStore(b, filepath.Join(b.TempDir(), "state"))
	for i := range n {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://cluster.local/ns/shop/sa/svc-%d", i))
		if err := st.Save(signedRecord(b, ca, id, testTTL, cartPod)); err != nil {
			b.Fatal(err)
		}
	}
	signs := ca.signs()
	for b.Loop() {
		m := newStoringManager(ca, clk, &recorder{}, st)
		res, err := m.Restore(context.Background(), onNode)
		if err != nil || res.Restored != n {
			b.Fatalf("restore: %+v, %v", res, err)
		}
		m.close()
	}
	if ca.signs() != signs {
		b.Fatalf("restore signed %d certificates", ca.signs()-signs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/identity")
}

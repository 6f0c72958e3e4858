package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/sdsload"
)

// TestSDSLoadSmall runs the load tool's scenarios at a small size, so that the benchmarks behind
// docs/benchmarks.md keep working: 4 pods x 5 streams see two bundle changes, and a burst of 5
// new identities is signed once each.
func TestSDSLoadSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, pods := loadStack(t, 4, sdsload.RotationExtra)
	l, err := sdsload.StartLoad(ctx, sdsload.LoadConfig{Stack: s, Node: sdsload.Node, Pods: pods,
		Fleet: sdsload.FleetConfig{StreamsPerSidecar: 5, StreamsPerConn: 3}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Fleet.Len() != 20 || l.FirstResponse.N != 20 || l.Memory.Streams != 20 || l.Memory.RSSAfter == 0 {
		t.Fatalf("fleet of %d streams, %d first responses, memory %+v", l.Fleet.Len(), l.FirstResponse.N, l.Memory)
	}
	for i := range 2 {
		if i > 0 {
			if err := l.Settle(ctx); err != nil {
				t.Fatal(err)
			}
		}
		d, err := l.RotateBundle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sdsload.Summarize(d); sum.N != 20 || sum.Min <= 0 {
			t.Fatalf("bundle change %d: %s", i+1, sum)
		}
	}

	s2, burst := loadStack(t, 5, nil)
	r, err := sdsload.Burst(ctx, s2, sdsload.Node, burst)
	if err != nil {
		t.Fatal(err)
	}
	if r.Pods != 5 || r.Signatures != 5 || r.FirstResponse.N != 5 {
		t.Fatalf("burst: %s", r)
	}
}

package issuer

import (
	"testing"
	"time"
)

func TestNodeLimitsArePerNodeAndRefill(t *testing.T) {
	l := newNodeLimits(2, 3) // 2/s, burst 3
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		if !l.allow("a", t0) {
			t.Fatalf("signature %d of the burst refused", i+1)
		}
	}
	if l.allow("a", t0) {
		t.Fatal("a fourth signature at once was allowed past a burst of 3")
	}
	if !l.allow("b", t0) {
		t.Fatal("node b was limited by node a's signatures")
	}
	if !l.allow("a", t0.Add(500*time.Millisecond)) || l.allow("a", t0.Add(500*time.Millisecond)) {
		t.Fatal("after 0.5s at 2/s, exactly one more signature should be allowed")
	}
	// Full buckets are forgotten on the next sweep.
	l.allow("c", t0.Add(time.Hour))
	if _, ok := l.buckets["a"]; ok {
		t.Error("a refilled bucket was kept")
	}
	if newNodeLimits(0, 10) != nil || !(*nodeLimits)(nil).allow("x", t0) {
		t.Error("a zero rate must disable the limit")
	}
}

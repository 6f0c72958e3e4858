package secrets

import (
	"testing"
	"time"
)

func TestRenewAtStaysWithinJitterAroundHalfLife(t *testing.T) {
	nb := testStart
	life := 24 * time.Hour
	na := nb.Add(life)
	lo, hi := nb.Add(life*45/100), nb.Add(life*55/100)

	if got, want := renewAt(nb, na, DefaultJitter, 0), nb.Add(life/2); !got.Equal(want) {
		t.Fatalf("renewAt(r=0) = %s, want exactly half-life %s", got, want)
	}
	if got := renewAt(nb, na, DefaultJitter, -1); !got.Equal(lo) {
		t.Errorf("renewAt(r=-1) = %s, want %s (45%%)", got, lo)
	}
	if got := renewAt(nb, na, DefaultJitter, 1); !got.Equal(hi) {
		t.Errorf("renewAt(r=1) = %s, want %s (55%%)", got, hi)
	}

	earliest, latest := na, nb
	for range 100_000 {
		r := symmetric()
		if r < -1 || r > 1 {
			t.Fatalf("symmetric() = %v, outside [-1, 1]", r)
		}
		at := renewAt(nb, na, DefaultJitter, r)
		if at.Before(lo) || at.After(hi) {
			t.Fatalf("renewAt(r=%v) = %s, outside [%s, %s]", r, at, lo, hi)
		}
		earliest, latest = minTime(earliest, at), maxTime(latest, at)
	}
	// The jitter must actually spread renewals (a herd renews together otherwise): 100k uniform
	// samples come within 1% of lifetime of both ends.
	if earliest.After(nb.Add(life*46/100)) || latest.Before(nb.Add(life*54/100)) {
		t.Errorf("renewals spread only over [%s, %s] of [%s, %s]", earliest.Sub(nb), latest.Sub(nb), lo.Sub(nb), hi.Sub(nb))
	}
}

func TestRetryDelayGrowsAndIsCapped(t *testing.T) {
	prevMax := time.Duration(0)
	for failures := 1; failures <= 12; failures++ {
		nominal := min(retryBase<<(failures-1), retryMax)
		lo, hi := nominal*8/10, nominal*12/10
		var smallest, largest time.Duration = hi, lo
		for range 2000 {
			d := retryDelay(failures)
			if d < lo || d > hi {
				t.Fatalf("retryDelay(%d) = %s, outside [%s, %s]", failures, d, lo, hi)
			}
			smallest, largest = min(smallest, d), max(largest, d)
		}
		if nominal < retryMax && smallest <= prevMax {
			t.Errorf("retryDelay(%d) as small as %s, not above the previous step's %s", failures, smallest, prevMax)
		}
		prevMax = largest
	}
	for _, failures := range []int{7, 20, 64, 1000} {
		if d := retryDelay(failures); d > retryMax*12/10 || d < retryMax*8/10 {
			t.Errorf("retryDelay(%d) = %s, want capped at %s ±20%%", failures, d, retryMax)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

package workloadtoken

import (
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type countingVerifier struct {
	calls int
	w     Workload
	err   error
}

func (c *countingVerifier) Verify(string) (Workload, error) { c.calls++; return c.w, c.err }

func TestCachedVerifierRemembersSuccessUntilExpiry(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	next := &countingVerifier{w: Workload{PodName: "a", Expiry: time.Unix(1000, 0).Add(3 * time.Minute)}}
	c := NewCachedVerifier(next, clk, 10*time.Minute, 16)
	for range 3 {
		if w, err := c.Verify("tok"); err != nil || w.PodName != "a" {
			t.Fatalf("Verify = %v, %v", w, err)
		}
	}
	if next.calls != 1 {
		t.Fatalf("underlying verifier called %d times, want 1", next.calls)
	}
	if _, _ = c.Verify("other"); next.calls != 2 {
		t.Fatal("a different token was answered from the cache")
	}
	clk.SetTime(time.Unix(1000, 0).Add(3 * time.Minute)) // the token's own expiry
	_, _ = c.Verify("tok")
	if next.calls != 3 {
		t.Fatal("a token was served from the cache past its expiry")
	}
}

func TestCachedVerifierMaxAgeAndRefusals(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	next := &countingVerifier{w: Workload{Expiry: time.Unix(1000, 0).Add(time.Hour)}}
	c := NewCachedVerifier(next, clk, time.Minute, 16)
	_, _ = c.Verify("tok")
	clk.SetTime(time.Unix(1000, 0).Add(61 * time.Second))
	_, _ = c.Verify("tok")
	if next.calls != 2 {
		t.Fatal("an entry outlived maxAge")
	}
	next.err = ErrSignature
	for range 2 {
		if _, err := c.Verify("bad"); !errors.Is(err, ErrSignature) {
			t.Fatalf("refusal not passed on: %v", err)
		}
	}
	if next.calls != 4 {
		t.Fatal("a refusal was cached")
	}
}

package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// untilVersion runs UntilVersion on a fake clock stepped 100ms at a time while it pauses, and
// returns its error and the fake times of the fetches.
func untilVersion(t *testing.T, want uint64, fetch func(n int) (uint64, error)) (error, []time.Time) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	var (
		mu sync.Mutex
		at []time.Time
	)
	done := make(chan error, 1)
	go func() {
		done <- UntilVersion(context.Background(), clk, want, 200*time.Millisecond, func(context.Context) (uint64, error) {
			mu.Lock()
			at = append(at, clk.Now())
			n := len(at)
			mu.Unlock()
			return fetch(n)
		})
	}()
	for {
		select {
		case err := <-done:
			return err, at
		default:
		}
		if clk.HasWaiters() {
			clk.Step(100 * time.Millisecond)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestUntilVersionStopsWhenReached(t *testing.T) {
	if err, at := untilVersion(t, 3, func(n int) (uint64, error) { return uint64(n), nil }); err != nil || len(at) != 3 {
		t.Errorf("err %v after %d fetches, want nil after 3", err, len(at))
	}
}

func TestUntilVersionBoundsAForgedVersion(t *testing.T) {
	err, at := untilVersion(t, 1<<40, func(int) (uint64, error) { return 2, nil })
	if !errors.Is(err, ErrVersionNotReached) || len(at) != RefetchAttempts {
		t.Fatalf("err %v after %d fetches, want ErrVersionNotReached after %d", err, len(at), RefetchAttempts)
	}
	want := []time.Duration{200, 400, 800, 1600, 3200, 5000, 5000} // doubling, capped at 5s
	for i, w := range want {
		if got := at[i+1].Sub(at[i]); got != w*time.Millisecond {
			t.Errorf("pause %d = %s, want %s", i+1, got, w*time.Millisecond)
		}
	}
}

func TestUntilVersionReturnsTheFetchError(t *testing.T) {
	boom := errors.New("citadel down")
	if err, at := untilVersion(t, 1, func(int) (uint64, error) { return 0, boom }); !errors.Is(err, boom) || len(at) != RefetchAttempts {
		t.Errorf("err %v after %d fetches, want the fetch error after %d", err, len(at), RefetchAttempts)
	}
}

package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/utils/clock"
)

// RefetchAttempts bounds the fetches one event can cause: the version an event names is not
// trusted beyond that, so a forged one costs this many fetches and changes nothing.
const RefetchAttempts = 8

const refetchMaxDelay = 5 * time.Second

// ErrVersionNotReached: the fetched state stayed older than the version an event announced.
var ErrVersionNotReached = errors.New("state did not reach the announced version")

// UntilVersion calls fetch until it returns a version of at least want, at most RefetchAttempts
// times, pausing delay before the second attempt and doubling it up to 5s (the source may lag the
// event by a moment). It returns nil once want is reached, else the last fetch's error, ctx's
// error, or ErrVersionNotReached.
func UntilVersion(ctx context.Context, clk clock.Clock, want uint64, delay time.Duration, fetch func(context.Context) (uint64, error)) error {
	for attempt := 1; ; attempt++ {
		got, err := fetch(ctx)
		if err == nil && got >= want {
			return nil
		}
		if attempt == RefetchAttempts {
			if err == nil {
				err = fmt.Errorf("%w: version %d, want %d", ErrVersionNotReached, got, want)
			}
			return err
		}
		t := clk.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C():
		}
		delay = min(2*delay, refetchMaxDelay)
	}
}

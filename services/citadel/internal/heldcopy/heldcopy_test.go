package heldcopy_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/heldcopy"
)

var errUnavailable = errors.New("doc unavailable")

type doc struct{ version uint64 }

// source fetches what next returns; the fetch itself is this package's caller's business (the
// gRPC paths are tested in trustbundle, jwtbundle and grpcapi).
func source(next func() (*doc, error)) *heldcopy.Source[*doc] {
	return heldcopy.New(heldcopy.Config[*doc]{What: "doc", Unavailable: errUnavailable,
		Fetch:   func(context.Context) (*doc, error) { return next() },
		Version: func(d *doc) uint64 { return d.version }, Refresh: time.Minute,
		Clock: clocktesting.NewFakeClock(time.Now()), Logger: slog.New(slog.DiscardHandler)})
}

func TestAnOlderAnswerNeverReplacesTheHeldCopy(t *testing.T) {
	answers := []*doc{{version: 5}, {version: 3}, {version: 7}}
	n := 0
	s := source(func() (*doc, error) { d := answers[n]; n++; return d, nil })
	for _, want := range []uint64{5, 5, 7} {
		got, err := s.Refresh(t.Context())
		if err != nil || got.version != want {
			t.Fatalf("refresh: version %v (%v), want %d", got, err, want)
		}
	}
}

func TestAFailedFetchKeepsTheLastGoodCopy(t *testing.T) {
	var down atomic.Bool
	s := source(func() (*doc, error) {
		if down.Load() {
			return nil, errors.New("connection refused")
		}
		return &doc{version: 2}, nil
	})
	down.Store(true)
	if _, err := s.Get(t.Context()); !errors.Is(err, errUnavailable) {
		t.Fatalf("Get with nothing held and the fetch failing: %v, want the Unavailable sentinel", err)
	}
	down.Store(false)
	if _, err := s.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	if _, err := s.Refresh(t.Context()); err == nil {
		t.Fatal("a failed refresh reported success")
	}
	if got, err := s.Get(t.Context()); err != nil || got.version != 2 {
		t.Fatalf("Get after a failed refresh: %v %v, want the last good copy", got, err)
	}
}

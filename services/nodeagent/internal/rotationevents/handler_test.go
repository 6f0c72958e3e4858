package rotationevents

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
)

type nopSecrets struct{}

func (nopSecrets) RefreshBundle(context.Context, string, uint64, time.Duration) error { return nil }
func (nopSecrets) Rotate(spiffeid.ID, string, time.Duration) bool                     { return false }
func (nopSecrets) RotateAll(string, time.Duration) int                                { return 0 }
func (nopSecrets) RenewIfSerial(spiffeid.ID, string) bool                             { return false }

type jwtBundles chan uint64

func (j jwtBundles) RefreshTo(_ context.Context, want uint64, _ int, _ time.Duration) error {
	j <- want
	return nil
}

// A JWTBundleChanged event refetches the JWT bundle up to the event's version.
func TestJWTBundleChangedRefetchesTheJWTBundle(t *testing.T) {
	got := make(jwtBundles, 1)
	h := &Handler{Secrets: nopSecrets{}, JWTBundles: got, Logger: slog.New(slog.DiscardHandler), BundleJitter: time.Millisecond}
	h.Handle(context.Background(), &eventsv1.Event{Kind: &eventsv1.Event_JwtBundleChanged{
		JwtBundleChanged: &eventsv1.JWTBundleChanged{BundleVersion: 7}}})
	select {
	case v := <-got:
		if v != 7 {
			t.Fatalf("refetched up to version %d, want 7", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the jwt bundle was not refetched")
	}
}

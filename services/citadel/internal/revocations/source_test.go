package revocations

import (
	"context"
	"crypto/x509"
	"log/slog"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
	clocktesting "k8s.io/utils/clock/testing"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// scripted answers GetRevocations with the queued states, the last one repeatedly.
type scripted struct {
	mu     sync.Mutex
	states []*kmsv1.GetRevocationsResponse
}

func (s *scripted) GetRevocations(context.Context, *kmsv1.GetRevocationsRequest, ...grpc.CallOption) (*kmsv1.GetRevocationsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.states[0]
	if len(s.states) > 1 {
		s.states = s.states[1:]
	}
	return r, nil
}

var (
	t0   = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cart = spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/cart")
	web  = spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/web")
)

func rev(id spiffeid.ID, at time.Time) *kmsv1.Revocation {
	return &kmsv1.Revocation{SpiffeId: id.String(), RevokedAt: timestamppb.New(at), NotBeforeCutoff: timestamppb.New(at.Add(5 * time.Minute))}
}

// A state older than the one held (a fetch that raced a newer one) is dropped, and each
// revocation is reported once.
func TestOlderStateIsDroppedAndRevocationsReportedOnce(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	kms := &scripted{states: []*kmsv1.GetRevocationsResponse{
		{Version: 2, Revocations: []*kmsv1.Revocation{rev(cart, t0)}},
		{Version: 1},
		{Version: 3, Revocations: []*kmsv1.Revocation{rev(cart, t0), rev(web, t0)}},
	}}
	var reported []spiffeid.ID
	s := New(Config{KMS: kms, Refresh: time.Minute, Clock: clk, Logger: slog.New(slog.DiscardHandler),
		OnRevoked: func(id spiffeid.ID) { reported = append(reported, id) }})
	old := &x509.Certificate{NotBefore: t0.Add(-time.Hour), SerialNumber: big.NewInt(1)}
	for i := range 3 {
		if err := s.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
		clk.Step(time.Hour) // past the recheck window: the held state decides
		if got, err := s.Revoked(t.Context(), cart, old); err != nil || !got {
			t.Fatalf("after fetch %d: revoked = %v, %v; want true", i+1, got, err)
		}
	}
	if len(reported) != 2 || reported[0] != cart || reported[1] != web {
		t.Fatalf("reported %v, want cart then web once each", reported)
	}
}

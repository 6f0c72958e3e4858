package sds_test

import (
	"context"
	"testing"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
)

// BenchmarkStreamSecretsFirstResponse measures what a sidecar waits for on start when the agent
// already holds its identity: open a stream over the Unix socket, authenticate, ask for default
// and ROOTCA, receive both from the warm cache.
func BenchmarkStreamSecretsFirstResponse(b *testing.B) {
	h := newHarness(b, options{})
	cred := h.cred(b, cart)
	if _, err := h.client.Fetch(context.Background(), "warm", cred, sds.DefaultName, sds.RootCAName); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := h.client.Open(ctx, "bench~cart", cred)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Request(true, sds.DefaultName, sds.RootCAName); err != nil {
			b.Fatal(err)
		}
		got, err := s.Recv()
		if err != nil || len(got) != 2 {
			b.Fatalf("got %d secrets, %v", len(got), err)
		}
		cancel()
	}
	b.StopTimer()
	if n := h.ca.signs(); n != 1 {
		b.Fatalf("%d Sign calls, want 1 (every stream served from cache)", n)
	}
}

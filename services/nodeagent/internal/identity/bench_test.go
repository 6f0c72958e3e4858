package identity_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// BenchmarkAuthenticate measures what identifying one new stream costs the agent in each mode,
// on a node of 110 pods (the kubelet's default maximum), after the connection's handshake
// (peercred's BenchmarkHandshake measures that part). Token verification is cold (every
// signature checked, as for a pod's first stream) or warm (the agent's cache of verified
// tokens, as for the pod's further streams). The ceiling is the pod lookup alone.
func BenchmarkAuthenticate(b *testing.B) {
	f := newFixture(b)
	pods := make([]*mcpv1.Pod, 0, 110)
	for i := range 110 {
		w := workloadtoken.Workload{Namespace: "shop", ServiceAccount: fmt.Sprintf("sa-%d", i),
			PodName: fmt.Sprintf("pod-%d", i), PodUID: fmt.Sprintf("uid-%03d", i)}
		pods = append(pods, pod(w, node))
	}
	pods = append(pods, pod(cart, node))
	f.apply(b, pods...)
	tok, err := f.issuer.Issue(cart, []string{audience}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	cold := f.auth.Verifier
	warm := workloadtoken.NewCachedVerifier(cold, f.clk, 5*time.Minute, 100)
	ref := &attestedpod.Ref{Namespace: cart.Namespace, Name: cart.PodName, UID: cart.PodUID}
	for _, tc := range []struct {
		name     string
		mode     identity.Mode
		verifier identity.Verifier
		ev       identity.Evidence
	}{
		{"ceiling-pod-lookup", "", nil, identity.Evidence{}},
		{"token-cold", identity.ModeToken, cold, identity.Evidence{Token: tok}},
		{"token-warm", identity.ModeToken, warm, identity.Evidence{Token: tok}},
		{"peer", identity.ModePeer, cold, identity.Evidence{Peer: identity.Peer{PodUID: cart.PodUID}}},
		{"token+peer-cold", identity.ModeTokenPeer, cold, identity.Evidence{Token: tok, Peer: identity.Peer{PodUID: cart.PodUID}}},
		{"token+peer-warm", identity.ModeTokenPeer, warm, identity.Evidence{Token: tok, Peer: identity.Peer{PodUID: cart.PodUID}}},
		{"token+peer-no-token", identity.ModeTokenPeer, cold, identity.Evidence{Peer: identity.Peer{PodUID: cart.PodUID}}},
		{"per-pod-socket", identity.ModeTokenPeer, cold, identity.Evidence{Peer: identity.Peer{SocketPod: ref}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			auth := *f.auth
			auth.Mode, auth.Verifier = tc.mode, tc.verifier
			lat := make([]time.Duration, 0, 1024)
			ctx := context.Background()
			for b.Loop() {
				start := time.Now()
				if tc.mode == "" {
					if _, ok := f.pods.Find(func(p *mcpv1.Pod) bool { return p.GetUid() == cart.PodUID }); !ok {
						b.Fatal("pod not found")
					}
				} else if _, err := auth.Authenticate(ctx, tc.ev); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

package grpcapi

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/rotationevents"
)

func (h *harness) jwtClient(node string) cav1.JWTSVIDServiceClient {
	return cav1.NewJWTSVIDServiceClient(h.conn("nodeagent-"+node, mustID(servicetls.NodeAgentID(td, node))))
}

func mint(c cav1.JWTSVIDServiceClient, token string, md *structpb.Struct, ttl time.Duration, audiences ...string) (*cav1.MintJWTSVIDResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return c.MintJWTSVID(ctx, &cav1.MintJWTSVIDRequest{Audiences: audiences, TtlSeconds: int64(ttl / time.Second), Metadata: md})
}

// bundleOf fetches citadel's JWT bundle as a node agent would, parsed by go-spiffe.
func bundleOf(t *testing.T, c cav1.JWTSVIDServiceClient) (*jwtbundle.Bundle, uint64) {
	t.Helper()
	resp, err := c.GetJWTBundle(t.Context(), &cav1.GetJWTBundleRequest{})
	if err != nil {
		t.Fatalf("GetJWTBundle: %v", err)
	}
	b, err := jwtbundle.Parse(spiffeid.RequireTrustDomainFromString(resp.GetTrustDomain()), resp.GetJwks())
	if err != nil {
		t.Fatal(err)
	}
	return b, resp.GetVersion()
}

func TestWorkloadWithATokenGetsAJWTSVID(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	c := h.jwtClient("node-a")
	resp, err := mint(c, h.token(cartWorkload), nil, 0, "orders", "billing")
	if err != nil {
		t.Fatalf("MintJWTSVID: %v", err)
	}
	bundle, _ := bundleOf(t, c)
	svid, err := jwtsvid.ParseAndValidate(resp.GetToken(), bundle, []string{"billing"})
	if err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if svid.ID.String() != cartID || resp.GetSpiffeId() != cartID || !svid.Expiry.Equal(resp.GetExpiresAt().AsTime()) {
		t.Fatalf("svid %s (response %s) expiring %s (response %s)", svid.ID, resp.GetSpiffeId(), svid.Expiry, resp.GetExpiresAt().AsTime())
	}
	if got := svid.Expiry.Sub(h.clock.Now().Truncate(time.Second)); got != 5*time.Minute {
		t.Fatalf("default lifetime %s, want 5m", got)
	}
	if got := testutil.ToFloat64(h.metrics.JWTMints.WithLabelValues(metrics.ResultOK)); got != 1 {
		t.Fatalf("%s{result=ok} = %v", metrics.JWTMints, got)
	}
}

func TestAttestedPodGetsAJWTSVID(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.setPods(cartPod, attestedPod)
	ref := attestedpod.Ref{Namespace: "shop", Name: "checkout-0", UID: attestedUID}
	resp, err := mint(h.jwtClient("node-a"), "", attestedpod.Set(nil, ref), 0, "orders")
	if err != nil {
		t.Fatalf("MintJWTSVID: %v", err)
	}
	if want := "spiffe://example.org/ns/shop/sa/checkout"; resp.GetSpiffeId() != want {
		t.Fatalf("minted for %s, want %s", resp.GetSpiffeId(), want)
	}
	_, err = mint(h.jwtClient("node-b"), "", attestedpod.Set(nil, ref), 0, "orders")
	wantCode(t, err, codes.PermissionDenied)
}

// MintJWTSVID refuses what CreateCertificate refuses, with the same codes, plus bad audiences.
func TestJWTSVIDRefusals(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	token := h.token(cartWorkload)
	for name, tc := range map[string]struct {
		client    cav1.JWTSVIDServiceClient
		token     string
		audiences []string
		code      codes.Code
		message   string
	}{
		"pod on another node":    {h.jwtClient("node-b"), token, []string{"a"}, codes.PermissionDenied, "runs on node node-a, not on calling node node-b"},
		"no token, no statement": {h.jwtClient("node-a"), "", []string{"a"}, codes.Unauthenticated, "no workload token"},
		"forged token":           {h.jwtClient("node-a"), token[:len(token)-4] + "AAAA", []string{"a"}, codes.Unauthenticated, ""},
		"no audience":            {h.jwtClient("node-a"), token, nil, codes.InvalidArgument, "at least one audience is required"},
		"empty audience":         {h.jwtClient("node-a"), token, []string{"a", ""}, codes.InvalidArgument, "audience 1 is empty"},
		"eleven audiences":       {h.jwtClient("node-a"), token, strings.Split("a,b,c,d,e,f,g,h,i,j,k", ","), codes.InvalidArgument, "at most 10"},
		"not a node agent": {cav1.NewJWTSVIDServiceClient(h.conn("mcp-sync", mustID(servicetls.ServiceID(td, servicetls.MCPSync)))),
			token, []string{"a"}, codes.PermissionDenied, ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := mint(tc.client, tc.token, nil, 0, tc.audiences...)
			st := wantCode(t, err, tc.code)
			if !strings.Contains(st.Message(), tc.message) {
				t.Fatalf("message %q lacks %q", st.Message(), tc.message)
			}
		})
	}
	if n := h.kms.JWT.Signs.Load(); n != 0 {
		t.Fatalf("kms-adapter was asked to sign %d refused requests", n)
	}
}

func TestJWTSVIDLifetimeIsClamped(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	resp, err := mint(h.jwtClient("node-a"), h.token(cartWorkload), nil, 10*time.Hour, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetExpiresAt().AsTime().Sub(h.clock.Now().Truncate(time.Second)); got != time.Hour {
		t.Fatalf("lifetime %s, want the 1h maximum", got)
	}
	_, err = h.jwtClient("node-a").MintJWTSVID(t.Context(), &cav1.MintJWTSVIDRequest{Audiences: []string{"a"}, TtlSeconds: -1})
	if st := wantCode(t, err, codes.InvalidArgument); !strings.Contains(st.Message(), "ttl_seconds -1 is out of range") {
		t.Fatalf("message %q", st.Message())
	}
}

func TestJWTSVIDsAreRateLimitedPerNode(t *testing.T) {
	h := newHarness(t, harnessConfig{nodeSignRate: 1, nodeSignBurst: 2})
	h.setPods(cartPod, attestedPod)
	token := h.token(cartWorkload)
	for range 2 {
		if _, err := mint(h.jwtClient("node-a"), token, nil, 0, "a"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := mint(h.jwtClient("node-a"), token, nil, 0, "a")
	st := wantCode(t, err, codes.ResourceExhausted)
	if !strings.Contains(st.Message(), `node "node-a"`) {
		t.Fatalf("message %q does not name the node", st.Message())
	}
	// Certificates have a bucket of their own: JWTs do not starve renewals.
	csr, _ := newCSR(t)
	if _, err := createCert(h.nodeClient("node-a"), token, csr, time.Hour); err != nil {
		t.Fatalf("a certificate after the node's JWT burst: %v", err)
	}
}

// A rotated JWT key reaches node agents through citadel once the JWTBundleChanged event arrives:
// citadel serves its held copy until then.
func TestJWTBundleIsRefetchedOnItsEvent(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	c := h.jwtClient("node-a")
	_, v1 := bundleOf(t, c)
	v2 := h.kms.RotateJWTKey()
	if _, got := bundleOf(t, c); got != v1 {
		t.Fatalf("citadel refetched (version %d) without an event", got)
	}
	handler := &rotationevents.Handler{Cache: h.iss, Bundles: nil, JWTBundles: h.jwtBundles, Revocations: h.revoked,
		Logger: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handler.Handle(ctx, &eventsv1.Event{Kind: &eventsv1.Event_JwtBundleChanged{JwtBundleChanged: &eventsv1.JWTBundleChanged{BundleVersion: v2}}})
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, got := bundleOf(t, c)
		if got == v2 {
			if _, ok := b.FindJWTAuthority(h.kms.ActiveJWTKeyID()); !ok {
				t.Fatal("the new bundle lacks the new key")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("citadel serves version %d after the event, want %d", got, v2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := mint(c, h.token(cartWorkload), nil, 0, "orders")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := bundleOf(t, c)
	if _, err := jwtsvid.ParseAndValidate(resp.GetToken(), b, []string{"orders"}); err != nil {
		t.Fatalf("a token of the new key: %v", err)
	}
}

package sds_test

import (
	"context"
	"errors"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

func TestStreamDeliversDefaultAndRootCA(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	s, err := h.client.Open(ctx, "sidecar~cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(true, sds.DefaultName, sds.RootCAName); err != nil {
		t.Fatal(err)
	}
	got, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d secrets, want default and ROOTCA", len(got))
	}
	h.verified(t, got, sds.DefaultName, cartID)
	if n := h.ca.signs(); n != 1 {
		t.Fatalf("%d Sign calls, want 1", n)
	}
}

func TestStreamNameMayBeTheCallersSpiffeID(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	s, err := h.client.Open(ctx, "sidecar~cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(true, cartID.String(), sds.RootCAName); err != nil {
		t.Fatal(err)
	}
	got, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	h.verified(t, got, cartID.String(), cartID)
}

func TestStreamKeepsTheUnionOfOneNamePerRequest(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	s, err := h.client.Open(ctx, "mosn~cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(false, sds.DefaultName); err != nil { // MOSN: one name per request
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 1 || first[sds.DefaultName] == nil {
		t.Fatalf("first response %v, want only default", first)
	}
	if err := s.Request(false, sds.RootCAName); err != nil {
		t.Fatal(err)
	}
	second, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(second) != 2 {
		t.Fatalf("second response holds %d secrets, want default and ROOTCA (the union stays subscribed)", len(second))
	}
	h.verified(t, second, sds.DefaultName, cartID)
	if h.ca.signs() != 1 {
		t.Fatalf("%d Sign calls, want 1 (the second response is served from cache)", h.ca.signs())
	}
}

func TestStreamTokenInNodeMetadata(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	s, err := h.client.Open(ctx, "envoy~cart", sdsclient.Credential{Token: h.token(t, cart), InNodeMetadata: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(true, sds.DefaultName, sds.RootCAName); err != nil {
		t.Fatal(err)
	}
	got, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	h.verified(t, got, sds.DefaultName, cartID)
}

func TestStreamRefusals(t *testing.T) {
	h := newHarness(t, options{})
	forger := func() string {
		f, err := workloadtoken.NewIssuer(tokenIssuer, h.clk) // same issuer name, another key
		if err != nil {
			t.Fatal(err)
		}
		tok, err := f.Issue(cart, []string{audience}, 3600e9)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tc := range []struct {
		name  string
		cred  sdsclient.Credential
		names []string
		want  codes.Code
	}{
		{"unknown name", h.cred(t, cart), []string{"file-cert:/etc/certs/cert.pem"}, codes.NotFound},
		{"another identity's spiffe id", h.cred(t, cart), []string{webID.String()}, codes.PermissionDenied},
		{"another identity's spiffe id after good names", h.cred(t, cart), []string{sds.DefaultName, webID.String()}, codes.PermissionDenied},
		{"garbage token", sdsclient.Credential{Token: "not-a-jwt"}, []string{sds.DefaultName}, codes.Unauthenticated},
		{"forged token", sdsclient.Credential{Token: forger()}, []string{sds.DefaultName}, codes.Unauthenticated},
		{"no token", sdsclient.Credential{}, []string{sds.DefaultName}, codes.Unauthenticated},
		{"pod on another node", h.cred(t, remote), []string{sds.DefaultName}, codes.PermissionDenied},
		{"pod in no view", h.cred(t, ghost), []string{sds.DefaultName}, codes.PermissionDenied},
		{"no names", h.cred(t, cart), nil, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			s, err := h.client.Open(ctx, "sidecar", tc.cred)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Request(true, tc.names...); err != nil {
				t.Fatal(err)
			}
			got, err := s.Recv()
			if err == nil {
				t.Fatalf("got secrets %v, want refusal %v", len(got), tc.want)
			}
			requireCode(t, err, tc.want)

			_, err = h.client.Fetch(ctx, "sidecar", tc.cred, tc.names...)
			requireCode(t, err, tc.want)
		})
	}
	if n := h.ca.signs(); n != 0 {
		t.Fatalf("refused callers caused %d Sign calls, want 0", n)
	}
}

func TestStreamPushesRenewal(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	s, err := h.client.Open(ctx, "sidecar~cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(true, sds.DefaultName, sds.RootCAName); err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	leaf1 := h.verified(t, first, sds.DefaultName, cartID)
	// Recv ACKed; an ACK builds nothing, so once the stream has settled only the renewal itself
	// can cause a push.
	// Two builds: the first response, and the wakeup of this stream's own subscription by that
	// first issuance (bundle fetched, certificate issued; coalesced).
	eventually(t, "the stream to settle", func() bool { return h.secrets.certificateCalls() >= 2 })

	h.renewalPoint(leaf1) // the manager renews on its timer and the stream pushes
	second, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	leaf2 := h.verified(t, second, sds.DefaultName, cartID)
	if leaf2.SerialNumber.Cmp(leaf1.SerialNumber) == 0 {
		t.Fatalf("pushed the same serial %x again", leaf1.SerialNumber)
	}
	if h.ca.signs() != 2 {
		t.Fatalf("%d Sign calls, want 2", h.ca.signs())
	}
	if n := h.obs.pushCount(sds.DefaultName); n != 2 {
		t.Fatalf("default pushed %d times, want 2", n)
	}
}

func TestStreamBeforePodViewIsAnsweredOnceSynced(t *testing.T) {
	h := newHarness(t, options{unsynced: true})
	ctx := testCtx(t)
	s, err := h.client.Open(ctx, "sidecar~cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(true, sds.DefaultName, sds.RootCAName); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.auth.entered: // the request is in, the agent has no pod list yet
	case <-ctx.Done():
		t.Fatal("request never reached the authenticator")
	}
	h.syncPods(t)
	got, err := s.Recv()
	if err != nil {
		t.Fatalf("request made before the pod view synced: %v", err)
	}
	h.verified(t, got, sds.DefaultName, cartID)
}

func TestFetchSecrets(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	cred := h.cred(t, cart)
	got, err := h.client.Fetch(ctx, "sidecar~cart", cred, sds.DefaultName, sds.RootCAName)
	if err != nil {
		t.Fatal(err)
	}
	leaf := h.verified(t, got, sds.DefaultName, cartID)
	again, err := h.client.Fetch(ctx, "sidecar~cart", cred, sds.DefaultName, sds.RootCAName)
	if err != nil {
		t.Fatal(err)
	}
	if l := h.verified(t, again, sds.DefaultName, cartID); l.SerialNumber.Cmp(leaf.SerialNumber) != 0 || h.ca.signs() != 1 {
		t.Fatalf("second fetch: serial %x, %d Sign calls; want the cached %x and 1 call", l.SerialNumber, h.ca.signs(), leaf.SerialNumber)
	}
}

func TestFetchRefusedByCitadelKeepsItsCode(t *testing.T) {
	h := newHarness(t, options{})
	h.ca.set(func(ca *testCA) {
		ca.failWith = errors.Join(secrets.ErrRejected, status.Error(codes.PermissionDenied, "pod not on calling node"))
	})
	_, err := h.client.Fetch(testCtx(t), "sidecar~cart", h.cred(t, cart), sds.DefaultName)
	requireCode(t, err, codes.PermissionDenied)
}

func TestChainForAnotherKeyIsNeverServed(t *testing.T) {
	h := newHarness(t, options{})
	h.ca.set(func(ca *testCA) { ca.wrongKey = true })
	// The agent keeps retrying (it is not a refusal) until the caller gives up; nothing is sent.
	ctx, cancel := context.WithTimeout(testCtx(t), 500e6)
	defer cancel()
	got, err := h.client.Fetch(ctx, "sidecar~cart", h.cred(t, cart), sds.DefaultName)
	requireCode(t, err, codes.DeadlineExceeded)
	if got != nil || h.ca.signs() < 1 {
		t.Fatalf("got %v after %d Sign calls", got, h.ca.signs())
	}
	h.ca.set(func(ca *testCA) { ca.wrongKey = false })
	good, err := h.client.Fetch(testCtx(t), "sidecar~cart", h.cred(t, cart), sds.DefaultName, sds.RootCAName)
	if err != nil {
		t.Fatal(err)
	}
	h.verified(t, good, sds.DefaultName, cartID)
}

// rawClient is the plain go-control-plane SDS client, for what sdsclient does not expose
// (NACKs, delta).
func rawClient(t testing.TB, h *harness) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+h.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, workloadtoken.GRPCMetadataKey, "Bearer "+tok)
}

func TestStreamNACKDoesNotCauseResend(t *testing.T) {
	h := newHarness(t, options{})
	ctx := withToken(testCtx(t), h.token(t, cart))
	st, err := rawClient(t, h).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{sds.DefaultName, sds.RootCAName}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "envoy~cart"}, TypeUrl: sds.SecretTypeURL, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// Envoy NACKs with the last version it accepted (none) and the nonce it rejects.
	if err := st.Send(&discovery.DiscoveryRequest{
		TypeUrl: sds.SecretTypeURL, ResourceNames: names, ResponseNonce: first.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected by listener"},
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NACK to be seen", func() bool { return h.obs.nackCount() == 1 })

	// The next response must be the renewal: a resend of the rejected content would come first.
	leaf1 := leafOf(t, first.GetResources()[0])
	h.renewalPoint(leaf1)
	next, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if next.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatalf("after a NACK the server resent version %s", first.GetVersionInfo())
	}
	if leaf2 := leafOf(t, next.GetResources()[0]); leaf2.SerialNumber.Cmp(leaf1.SerialNumber) == 0 {
		t.Fatal("response after the NACK is not the renewed certificate")
	}
	// The server counts a push after sending it, so the client can see it first.
	eventually(t, "default pushed twice (first and renewal)", func() bool { return h.obs.pushCount(sds.DefaultName) == 2 })
}

// An ACK answers nothing and must not rebuild the stream's secrets (which re-encodes the private
// key): with thousands of streams, every push would otherwise cost a second build.
func TestAckBuildsNothing(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	s, err := h.client.Open(ctx, "sidecar~cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Request(true, sds.DefaultName); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil { // Recv ACKs
		t.Fatal(err)
	}
	// One build for the first response, one for the subscription wakeup of that first issuance.
	eventually(t, "the stream to settle", func() bool { return h.secrets.certificateCalls() >= 2 })
	// Requests are handled in order: once this one is answered, the ACK before it has been too.
	if err := s.Request(false, cartID.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	// The new name's build looks up two names ("default" and the SPIFFE ID).
	if got := h.secrets.certificateCalls(); got != 4 {
		t.Fatalf("%d certificate lookups, want 4: the ACK must not have rebuilt the stream", got)
	}
}

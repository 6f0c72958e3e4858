package sds_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
)

const webKeyName = "key/shop/web-key"

// labelPods delivers the fixture's pod view with labels: web is app=web, cart app=cart.
func (h *harness) labelPods(tb testing.TB, webLabels map[string]string) {
	tb.Helper()
	var res []*anypb.Any
	for _, p := range []struct {
		w      workloadtoken.Workload
		node   string
		labels map[string]string
	}{{cart, nodeName, map[string]string{"app": "cart"}}, {web, nodeName, webLabels}, {remote, "node-b", map[string]string{"app": "cart"}}} {
		a, err := anypb.New(&mcpv1.Pod{
			Name: p.w.PodKey(), Namespace: p.w.Namespace, PodName: p.w.PodName, Uid: p.w.PodUID,
			NodeName: p.node, ServiceAccount: p.w.ServiceAccount, Labels: p.labels,
		})
		if err != nil {
			tb.Fatal(err)
		}
		res = append(res, a)
	}
	if err := h.pods.Apply(res); err != nil {
		tb.Fatal(err)
	}
}

// setKeySecrets delivers the node's KeySecret view as mcp-sync would.
func (h *harness) setKeySecrets(tb testing.TB, kss ...*mcpv1.KeySecret) {
	tb.Helper()
	res := []*anypb.Any{}
	for _, ks := range kss {
		a, err := anypb.New(ks)
		if err != nil {
			tb.Fatal(err)
		}
		res = append(res, a)
	}
	if err := h.keys.Apply(res); err != nil {
		tb.Fatal(err)
	}
}

// webKey is a KeySecret of namespace shop that selects app=web.
func webKey(data map[string][]byte) *mcpv1.KeySecret {
	return &mcpv1.KeySecret{Name: "shop/web-key", Namespace: "shop", KeySecretName: "web-key", Uid: "uid-web-key",
		Selector: &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, Data: data}
}

func newKeyHarness(tb testing.TB, opt options) *harness {
	tb.Helper()
	opt.keySecrets = true
	h := newHarness(tb, opt)
	h.labelPods(tb, map[string]string{"app": "web"})
	h.setKeySecrets(tb, webKey(map[string][]byte{"hmac": []byte("s3cret-v1"), "token": []byte("tok-v1")}))
	return h
}

func generic(tb testing.TB, s *tlsv3.Secret) map[string][]byte {
	tb.Helper()
	if s == nil {
		tb.Fatal("secret missing from the response")
	}
	d, err := sdsclient.Generic(s)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func TestKeySecretServedOnlyToSelectedPods(t *testing.T) {
	h := newKeyHarness(t, options{})
	ctx := testCtx(t)

	got, err := h.client.Fetch(ctx, "web", h.cred(t, web), webKeyName, webKeyName+"/token")
	if err != nil {
		t.Fatal(err)
	}
	if d := generic(t, got[webKeyName]); len(d) != 2 || string(d["hmac"]) != "s3cret-v1" || string(d["token"]) != "tok-v1" {
		t.Errorf("%s = %q, want both data keys", webKeyName, d)
	}
	if d := generic(t, got[webKeyName+"/token"]); len(d) != 1 || string(d[""]) != "tok-v1" {
		t.Errorf("%s/token = %q, want the token alone as generic_secret.secret", webKeyName, d)
	}

	// cart runs on the same node and in the same namespace, but the selector does not pick it.
	_, err = h.client.Fetch(ctx, "cart", h.cred(t, cart), webKeyName)
	requireCode(t, err, codes.PermissionDenied)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "shop/web-key") || !strings.Contains(msg, "shop/cart-1") ||
		strings.Contains(msg, "s3cret") {
		t.Errorf("refusal %q should name the KeySecret and the pod, and never the data", msg)
	}
	// A stream that asks for it is refused too.
	st, err := h.client.Open(ctx, "cart", h.cred(t, cart))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Request(true, sds.DefaultName, webKeyName); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	requireCode(t, err, codes.PermissionDenied)

	for _, name := range []string{"key/shop/nope", "key/shop", "key/shop/web-key/missing", "key/shop/web-key/token/x", "key//web-key"} {
		_, err = h.client.Fetch(ctx, "web", h.cred(t, web), name)
		requireCode(t, err, codes.NotFound)
	}
}

func TestKeySecretOverTheLimitIsRefused(t *testing.T) {
	h := newKeyHarness(t, options{keySecretMaxBytes: 1024})
	h.setKeySecrets(t, webKey(map[string][]byte{"blob": bytes.Repeat([]byte{'x'}, 1024)}))
	_, err := h.client.Fetch(testCtx(t), "web", h.cred(t, web), webKeyName)
	requireCode(t, err, codes.FailedPrecondition)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "1028 bytes") || !strings.Contains(msg, "-keysecret-max-bytes") {
		t.Errorf("refusal %q should give the size and the flag", msg)
	}
}

// A SotW stream gets edits at once, loses the resource when its pod leaves the selector (the
// next response omits it) and gets it back when the pod matches again.
func TestKeySecretStreamFollowsEditsAndSelection(t *testing.T) {
	h := newKeyHarness(t, options{})
	ctx := testCtx(t)
	st, err := h.client.Open(ctx, "web", h.cred(t, web))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Request(true, sds.DefaultName, webKeyName); err != nil {
		t.Fatal(err)
	}
	got, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if d := generic(t, got[webKeyName]); string(d["token"]) != "tok-v1" || got[sds.DefaultName] == nil {
		t.Fatalf("first response: %q", d)
	}

	h.setKeySecrets(t, webKey(map[string][]byte{"hmac": []byte("s3cret-v1"), "token": []byte("tok-v2")}))
	if got, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if d := generic(t, got[webKeyName]); string(d["token"]) != "tok-v2" {
		t.Fatalf("after the edit: %q, want tok-v2", d)
	}

	h.labelPods(t, map[string]string{"app": "web-canary"})
	if got, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, ok := got[webKeyName]; ok || got[sds.DefaultName] == nil {
		t.Fatalf("after relabelling the pod out of the selector the response holds %v, want default only", keys(got))
	}

	h.labelPods(t, map[string]string{"app": "web"})
	if got, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if d := generic(t, got[webKeyName]); string(d["token"]) != "tok-v2" {
		t.Fatalf("after relabelling back: %q", d)
	}

	h.setKeySecrets(t) // deleted
	if got, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, ok := got[webKeyName]; ok {
		t.Fatal("a deleted KeySecret is still served")
	}

	// A change that does not touch what the stream holds sends nothing: the next response is
	// the one of the next real change.
	h.labelPods(t, map[string]string{"app": "web", "tier": "front"})
	h.setKeySecrets(t, webKey(map[string][]byte{"token": []byte("tok-v3")}))
	if got, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if d := generic(t, got[webKeyName]); string(d["token"]) != "tok-v3" {
		t.Fatalf("after re-creation: %q", d)
	}
}

// On a delta stream a KeySecret taken away is a removed_resources entry.
func TestKeySecretDeltaRemoval(t *testing.T) {
	h := newKeyHarness(t, options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+h.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, workloadtoken.GRPCMetadataKey, "Bearer "+h.token(t, web))
	st, err := secretv3.NewSecretDiscoveryServiceClient(conn).DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "web"}, TypeUrl: sds.SecretTypeURL,
		ResourceNamesSubscribe: []string{webKeyName}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != webKeyName {
		t.Fatalf("first delta response: %v", resp)
	}
	ack := func(r *discovery.DeltaDiscoveryResponse) {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	ack(resp)
	h.labelPods(t, map[string]string{"app": "other"})
	if resp, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 0 || len(resp.GetRemovedResources()) != 1 || resp.GetRemovedResources()[0] != webKeyName {
		t.Fatalf("after relabelling: resources %d, removed %v; want %s removed", len(resp.GetResources()), resp.GetRemovedResources(), webKeyName)
	}
	ack(resp)
	h.labelPods(t, map[string]string{"app": "web"})
	if resp, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("after relabelling back: %v", resp)
	}
	// A delta subscription to a KeySecret the pod may not read is refused.
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResponseNonce: resp.GetNonce(),
		ResourceNamesSubscribe: []string{"key/shop/other"}}); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	requireCode(t, err, codes.NotFound)
}

// A caller that the connection identifies (a per-pod socket) and that sends no token is
// authorized the same way: by its pod's labels.
func TestKeySecretForPerPodSocketCallers(t *testing.T) {
	for _, tc := range []struct {
		w    workloadtoken.Workload
		want codes.Code
	}{{web, codes.OK}, {cart, codes.PermissionDenied}} {
		peer := &identity.Peer{SocketPod: &attestedpod.Ref{Namespace: tc.w.Namespace, Name: tc.w.PodName, UID: tc.w.PodUID}}
		h := newKeyHarness(t, options{peer: peer})
		_, err := h.client.Fetch(testCtx(t), "sidecar", sdsclient.Credential{}, webKeyName)
		requireCode(t, err, tc.want)
	}
}

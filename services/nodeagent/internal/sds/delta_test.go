package sds_test

import (
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
)

func resourceNames(r *discovery.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.GetName())
	}
	slices.Sort(out)
	return out
}

func resource(r *discovery.DeltaDiscoveryResponse, name string) *discovery.Resource {
	for _, res := range r.GetResources() {
		if res.GetName() == name {
			return res
		}
	}
	return nil
}

func TestDeltaSendsOnlyChangedResources(t *testing.T) {
	h := newHarness(t, options{})
	ctx := withToken(testCtx(t), h.token(t, cart))
	client := rawClient(t, h)
	ds, err := client.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.Send(&discovery.DeltaDiscoveryRequest{
		Node: &core.Node{Id: "envoy~cart"}, TypeUrl: sds.SecretTypeURL,
		ResourceNamesSubscribe: []string{sds.DefaultName, sds.RootCAName},
	}); err != nil {
		t.Fatal(err)
	}
	first, err := ds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := resourceNames(first); !slices.Equal(got, []string{sds.RootCAName, sds.DefaultName}) {
		t.Fatalf("first delta response holds %v, want ROOTCA and default", got)
	}
	leaf1 := leafOf(t, resource(first, sds.DefaultName).GetResource())
	rootVersion := resource(first, sds.RootCAName).GetVersion()
	if err := ds.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	// An ACK builds nothing.
	// Two builds: the first response, and the wakeup of this stream's own subscription by that
	// first issuance (bundle fetched, certificate issued; coalesced).
	eventually(t, "the stream to settle", func() bool { return h.secrets.certificateCalls() >= 2 })

	h.renewalPoint(leaf1)
	second, err := ds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := resourceNames(second); !slices.Equal(got, []string{sds.DefaultName}) {
		t.Fatalf("after a renewal the delta response holds %v, want only default (ROOTCA did not change)", got)
	}
	def := resource(second, sds.DefaultName)
	if leaf2 := leafOf(t, def.GetResource()); leaf2.SerialNumber.Cmp(leaf1.SerialNumber) == 0 {
		t.Fatal("renewal pushed the old certificate")
	}
	if def.GetVersion() == resource(first, sds.DefaultName).GetVersion() {
		t.Fatal("renewed resource kept its version")
	}

	// A NACK does not make the server send the rejected resource again: the next response is
	// the answer to the following subscription, and holds only the newly subscribed name.
	if err := ds.Send(&discovery.DeltaDiscoveryRequest{
		TypeUrl: sds.SecretTypeURL, ResponseNonce: second.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected"},
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NACK to be seen", func() bool { return h.obs.nackCount() == 1 })
	if err := ds.Send(&discovery.DeltaDiscoveryRequest{
		TypeUrl: sds.SecretTypeURL, ResourceNamesSubscribe: []string{cartID.String()},
	}); err != nil {
		t.Fatal(err)
	}
	third, err := ds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := resourceNames(third); !slices.Equal(got, []string{cartID.String()}) {
		t.Fatalf("after a NACK and a new subscription the response holds %v, want only %s", got, cartID)
	}

	// A reconnecting client that already holds the current ROOTCA is sent only default.
	ds2, err := client.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ds2.Send(&discovery.DeltaDiscoveryRequest{
		Node: &core.Node{Id: "envoy~cart"}, TypeUrl: sds.SecretTypeURL,
		ResourceNamesSubscribe:  []string{sds.DefaultName, sds.RootCAName},
		InitialResourceVersions: map[string]string{sds.RootCAName: rootVersion},
	}); err != nil {
		t.Fatal(err)
	}
	resumed, err := ds2.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := resourceNames(resumed); !slices.Equal(got, []string{sds.DefaultName}) {
		t.Fatalf("resumed stream got %v, want only default", got)
	}
}

func TestDeltaRefusesForeignName(t *testing.T) {
	h := newHarness(t, options{})
	ds, err := rawClient(t, h).DeltaSecrets(withToken(testCtx(t), h.token(t, cart)))
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.Send(&discovery.DeltaDiscoveryRequest{
		Node: &core.Node{Id: "envoy~cart"}, TypeUrl: sds.SecretTypeURL, ResourceNamesSubscribe: []string{webID.String()},
	}); err != nil {
		t.Fatal(err)
	}
	_, err = ds.Recv()
	requireCode(t, err, codes.PermissionDenied)
}

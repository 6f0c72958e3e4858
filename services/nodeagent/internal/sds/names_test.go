package sds_test

import (
	"slices"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
)

// FetchSecrets answers each name once however often it is asked, as the streams do, and a request
// with more names than any honest one is refused: one request of 100,000 x "default" (900 KB)
// once made the agent build a 184 MB response.
func TestFetchSecretsDeduplicatesAndCapsNames(t *testing.T) {
	h := newHarness(t, options{})
	c := rawClient(t, h)
	fetch := func(names ...string) (*discovery.DiscoveryResponse, error) {
		return c.FetchSecrets(withToken(testCtx(t), h.token(t, cart)), &discovery.DiscoveryRequest{
			Node: &core.Node{Id: "sidecar~cart"}, TypeUrl: sds.SecretTypeURL, ResourceNames: names,
		})
	}
	once, err := fetch(sds.DefaultName, sds.RootCAName)
	if err != nil {
		t.Fatal(err)
	}
	dup := slices.Repeat([]string{sds.DefaultName, sds.RootCAName, sds.DefaultName}, sds.MaxNamesPerRequest/3)
	resp, err := fetch(dup...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d names (%d distinct): %d-byte response; the 2 names once: %d bytes", len(dup), 2, proto.Size(resp), proto.Size(once))
	if len(resp.GetResources()) != 2 || proto.Size(resp) > proto.Size(once)+64 {
		t.Fatalf("%d names of which 2 distinct: %d resources, %d bytes; want 2 resources, about %d bytes",
			len(dup), len(resp.GetResources()), proto.Size(resp), proto.Size(once))
	}
	if resp.GetVersionInfo() != once.GetVersionInfo() {
		t.Errorf("version %q differs from the version of the same two names asked once (%q)", resp.GetVersionInfo(), once.GetVersionInfo())
	}

	for _, n := range []int{sds.MaxNamesPerRequest + 1, 100000} {
		_, err := fetch(slices.Repeat([]string{sds.DefaultName}, n)...)
		requireCode(t, err, codes.InvalidArgument)
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "at most 100 are allowed") {
			t.Errorf("%d names: message %q does not name the limit", n, msg)
		}
	}
}

// Streams take the same cap.
func TestStreamRefusesTooManyNames(t *testing.T) {
	h := newHarness(t, options{})
	c := rawClient(t, h)
	stream, err := c.StreamSecrets(withToken(testCtx(t), h.token(t, cart)))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "sidecar~cart"}, TypeUrl: sds.SecretTypeURL,
		ResourceNames: slices.Repeat([]string{sds.DefaultName}, sds.MaxNamesPerRequest+1)}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	requireCode(t, err, codes.InvalidArgument)

	delta, err := c.DeltaSecrets(withToken(testCtx(t), h.token(t, cart)))
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "sidecar~cart"}, TypeUrl: sds.SecretTypeURL,
		ResourceNamesSubscribe: slices.Repeat([]string{sds.RootCAName}, sds.MaxNamesPerRequest+1)}); err != nil {
		t.Fatal(err)
	}
	_, err = delta.Recv()
	requireCode(t, err, codes.InvalidArgument)
}

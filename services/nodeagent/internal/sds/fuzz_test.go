package sds_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sds"
)

// sdsInput is one fuzzed request: what a sidecar (or anything that reaches the socket) controls.
type sdsInput struct {
	names                         []string
	version, nonce, typeURL, nack string
}

func (in sdsInput) allowed() bool {
	if len(in.names) == 0 || len(in.names) > 16 {
		return false
	}
	for _, n := range in.names {
		if n != sds.DefaultName && n != sds.RootCAName && n != cartID.String() {
			return false
		}
	}
	return true
}

func (in sdsInput) errorDetail() *statuspb.Status {
	if in.nack == "" {
		return nil
	}
	return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: in.nack}
}

// refusalCodes are the codes a malformed or foreign request may get; anything else (Internal,
// Unknown, Unavailable) would mean the agent failed on it.
var refusalCodes = []codes.Code{codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.ResourceExhausted}

func checkResponse(t *testing.T, in sdsInput, typeURL string, resources []*anypb.Any) {
	t.Helper()
	if typeURL != sds.SecretTypeURL {
		t.Fatalf("response type %q", typeURL)
	}
	if len(resources) == 0 {
		t.Fatal("an accepted request was answered with no resources")
	}
	for _, r := range resources {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatalf("resource is not a secret: %v", err)
		}
		if !slices.Contains(in.names, s.GetName()) {
			t.Fatalf("answered %q, which %q did not ask for", s.GetName(), in.names)
		}
	}
}

func checkRefusal(t *testing.T, in sdsInput, err error) {
	t.Helper()
	if !slices.Contains(refusalCodes, status.Code(err)) {
		t.Fatalf("names %q: %v, want a refusal", in.names, err)
	}
	if in.allowed() {
		t.Fatalf("refused well-formed names %q: %v", in.names, err)
	}
}

// FuzzRequests sends fuzzed names, versions, nonces, type URLs and NACK details on all three SDS
// methods of a real agent (real gRPC on a Unix socket, real token checks, real certificates).
// A well-formed request is answered with exactly what it named; anything else gets a refusal.
func FuzzRequests(f *testing.F) {
	h := newHarness(f, options{})
	conn, err := grpc.NewClient("unix://"+h.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	client := secretv3.NewSecretDiscoveryServiceClient(conn)
	node := &core.Node{Id: "sidecar~cart", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		workloadtoken.NodeMetadataKey: structpb.NewStringValue(h.token(f, cart)),
	}}}

	f.Add("default\nROOTCA", "", "", sds.SecretTypeURL, "")
	f.Add(cartID.String(), "1", "1", "", "")
	f.Add("default\ndefault\ndefault", "v", "n", "type.googleapis.com/other", "rejected")
	f.Add(webID.String(), "", "", sds.SecretTypeURL, "")
	f.Add("spiffe://cluster.local/ns/shop/sa/cart/..", "", "", "", "")
	f.Add("", "", "", "", "")
	f.Add("key/shop/secret", "", "", "", "")
	f.Fuzz(func(t *testing.T, names, version, nonce, typeURL, nack string) {
		for _, s := range []string{names, version, nonce, typeURL, nack} {
			if !utf8.ValidString(s) {
				return // proto3 strings: gRPC refuses to send (and to receive) them before the agent sees them
			}
		}
		in := sdsInput{version: version, nonce: nonce, typeURL: typeURL, nack: nack}
		if names != "" {
			in.names = strings.Split(names, "\n")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		resp, err := client.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: node, ResourceNames: in.names,
			VersionInfo: version, ResponseNonce: nonce, TypeUrl: typeURL, ErrorDetail: in.errorDetail()})
		if err == nil {
			checkResponse(t, in, resp.GetTypeUrl(), resp.GetResources())
		} else {
			checkRefusal(t, in, err)
		}

		sotw, err := client.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := sotw.Send(&discovery.DiscoveryRequest{Node: node, ResourceNames: in.names, VersionInfo: version,
			ResponseNonce: nonce, TypeUrl: typeURL, ErrorDetail: in.errorDetail()}); err != nil {
			t.Fatal(err)
		}
		if resp, err := sotw.Recv(); err == nil {
			checkResponse(t, in, resp.GetTypeUrl(), resp.GetResources())
		} else {
			checkRefusal(t, in, err)
		}

		if len(in.names) == 0 {
			return // a delta request that subscribes to nothing is answered with nothing
		}
		delta, err := client.DeltaSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		initial := map[string]string{}
		for _, n := range in.names {
			initial[n] = version // never a real content version: every name is answered
		}
		if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: node, ResourceNamesSubscribe: in.names,
			InitialResourceVersions: initial, ResponseNonce: nonce, TypeUrl: typeURL, ErrorDetail: in.errorDetail()}); err != nil {
			t.Fatal(err)
		}
		if resp, err := delta.Recv(); err == nil {
			var res []*anypb.Any
			for _, r := range resp.GetResources() {
				res = append(res, r.GetResource())
				if !slices.Contains(in.names, r.GetName()) {
					t.Fatalf("delta answered %q, which %q did not ask for", r.GetName(), in.names)
				}
			}
			checkResponse(t, in, resp.GetTypeUrl(), res)
		} else {
			checkRefusal(t, in, err)
		}
		cancel()
	})
}

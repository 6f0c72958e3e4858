package grpcapi

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

const attestedUID = "5b1f0c8e-2a4d-4e6b-8f1a-3c9d7e2b6a10"

var attestedPod = &mcpv1.Pod{
	Name: "shop/checkout-0", Namespace: "shop", PodName: "checkout-0", Uid: attestedUID,
	NodeName: "node-a", ServiceAccount: "checkout",
}

// attested asks for a certificate with no token, on the agent's word that ref asks.
func attested(c authv1.IstioCertificateServiceClient, md *structpb.Struct, csr string) (*authv1.IstioCertificateResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csr, Metadata: md})
}

func TestAttestedPodGetsItsServiceAccountsIdentity(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.setPods(cartPod, attestedPod)
	ref := attestedpod.Ref{Namespace: "shop", Name: "checkout-0", UID: attestedUID}
	csr, _ := newCSR(t)

	resp, err := attested(h.nodeClient("node-a"), attestedpod.Set(nil, ref), csr)
	if err != nil {
		t.Fatalf("attested pod refused: %v", err)
	}
	if got := parseChain(t, resp.GetCertChain())[0].URIs[0].String(); got != mustID(spiffeid.FromSegments(td, "ns", "shop", "sa", "checkout")).String() {
		t.Fatalf("issued for %s, want the pod's service account identity", got)
	}

	for name, tc := range map[string]struct {
		node string
		md   *structpb.Struct
		code codes.Code
	}{
		"by the agent of another node": {"node-b", attestedpod.Set(nil, ref), codes.PermissionDenied},
		"for a former pod of that name": {"node-a", attestedpod.Set(nil, attestedpod.Ref{Namespace: "shop", Name: "checkout-0",
			UID: "5b1f0c8e-2a4d-4e6b-8f1a-3c9d7e2b6a11"}), codes.PermissionDenied},
		"for a pod that does not exist": {"node-a", attestedpod.Set(nil, attestedpod.Ref{Namespace: "shop", Name: "ghost",
			UID: attestedUID}), codes.PermissionDenied},
		"malformed": {"node-a", &structpb.Struct{Fields: map[string]*structpb.Value{
			attestedpod.Key: structpb.NewStringValue("shop/checkout-0")}}, codes.Unauthenticated},
		"beside a renewal proof": {"node-a", withField(attestedpod.Set(nil, ref), renewalproof.SignatureKey), codes.Unauthenticated},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := attested(h.nodeClient(tc.node), tc.md, csr)
			wantCode(t, err, tc.code)
		})
	}
	t.Run("by a caller that is not a node agent", func(t *testing.T) {
		_, err := attested(h.client("mcp-sync", mustID(servicetls.ServiceID(td, servicetls.MCPSync))), attestedpod.Set(nil, ref), csr)
		wantCode(t, err, codes.PermissionDenied)
	})
}

func withField(md *structpb.Struct, key string) *structpb.Struct {
	md.Fields[key] = structpb.NewStringValue("x")
	return md
}

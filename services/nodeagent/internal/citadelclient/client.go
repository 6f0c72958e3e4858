// Package citadelclient is the agent's side of citadel's APIs: Istio's CreateCertificate for
// signing, the Portcullis trust bundle
// service and the JWT-SVID service.
package citadelclient

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// Client implements secrets.Signer, secrets.BundleSource and the Workload API's JWT-SVID minter
// and JWT bundle source over one mTLS connection.
type Client struct {
	ca     authv1.IstioCertificateServiceClient
	bundle cav1.TrustBundleServiceClient
	jwt    cav1.JWTSVIDServiceClient
}

// New wraps conn, a connection to citadel authenticated with the agent's node certificate.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{ca: authv1.NewIstioCertificateServiceClient(conn), bundle: cav1.NewTrustBundleServiceClient(conn),
		jwt: cav1.NewJWTSVIDServiceClient(conn)}
}

// Sign forwards the CSR with the agent's statement of the pod it attested, with the workload's
// token (as istio-agent does), or with a renewal proof made with the current certificate's key.
func (c *Client) Sign(ctx context.Context, csrPEM []byte, cred secrets.Credential, ttl time.Duration) ([]*x509.Certificate, error) {
	req := &authv1.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: int64(ttl / time.Second)}
	switch cur := cred.Current; {
	case cred.Pod == nil && cur != nil:
		block, _ := pem.Decode(csrPEM)
		if block == nil {
			return nil, fmt.Errorf("renewal: csr is not PEM")
		}
		proof, err := renewalproof.New(cur.Chain, cur.Key, block.Bytes)
		if err != nil {
			return nil, err
		}
		req.Metadata = proof
	default:
		ctx, req.Metadata = authorize(ctx, cred.Pod, cred.Token)
	}
	resp, err := c.ca.CreateCertificate(ctx, req)
	if err != nil {
		return nil, classify("citadel CreateCertificate", err)
	}
	var chain []*x509.Certificate
	for i, p := range resp.GetCertChain() {
		block, _ := pem.Decode([]byte(p))
		if block == nil {
			return nil, fmt.Errorf("citadel returned a non-PEM certificate at chain position %d", i)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d from citadel: %w", i, err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("citadel returned an empty chain")
	}
	return chain, nil
}

// authorize names the workload a request is for, as citadel expects it for certificates and
// JWT-SVIDs alike: the agent's statement of a pod it attested itself (in the request's metadata
// Struct), else the workload's token (authorization: Bearer).
func authorize(ctx context.Context, pod *attestedpod.Ref, token string) (context.Context, *structpb.Struct) {
	if pod != nil {
		return ctx, attestedpod.Set(nil, *pod)
	}
	return metadata.AppendToOutgoingContext(ctx, workloadtoken.GRPCMetadataKey, "Bearer "+token), nil
}

// TrustBundle fetches the roots and the bundle's version.
func (c *Client) TrustBundle(ctx context.Context) ([]*x509.Certificate, uint64, error) {
	resp, err := c.bundle.GetTrustBundle(ctx, &cav1.GetTrustBundleRequest{})
	if err != nil {
		return nil, 0, classify("citadel GetTrustBundle", err)
	}
	roots := make([]*x509.Certificate, 0, len(resp.GetRootCertificates()))
	for _, der := range resp.GetRootCertificates() {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, 0, fmt.Errorf("parsing trust bundle root: %w", err)
		}
		roots = append(roots, cert)
	}
	return roots, resp.GetVersion(), nil
}

// classify marks refusals that retrying cannot fix as secrets.ErrRejected, keeping the gRPC
// status in the chain so that the SDS edge can pass its code on.
func classify(what string, err error) error {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition:
		return fmt.Errorf("%s: %w: %w", what, secrets.ErrRejected, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Package sdsclient is an Envoy-style SDS v3 client over a Unix socket, built on go-control-plane
// types and grpc-go. The dev stack's demo workloads, e2e tests and load tools use it to get what a
// sidecar gets from the node agent.
package sdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// SecretTypeURL is the xDS type URL of an SDS secret.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Client talks SDS to one node agent socket.
type Client struct {
	conn *grpc.ClientConn
	sds  secretv3.SecretDiscoveryServiceClient
}

// Dial connects to the agent's Unix socket (the connection is made lazily).
func Dial(socketPath string) (*Client, error) {
	abs, err := filepath.Abs(socketPath) // "unix://" takes an absolute path; a relative one parses as an authority
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dialing sds socket %s: %w", socketPath, err)
	}
	return &Client{conn: conn, sds: secretv3.NewSecretDiscoveryServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Credential says how a caller presents its workload token.
type Credential struct {
	Token string
	// InNodeMetadata puts the token in the xDS node metadata instead of gRPC metadata.
	InNodeMetadata bool
}

func (cred Credential) context(ctx context.Context) context.Context {
	if cred.Token == "" || cred.InNodeMetadata {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, workloadtoken.GRPCMetadataKey, "Bearer "+cred.Token)
}

func (cred Credential) node(id string) *core.Node {
	n := &core.Node{Id: id}
	if cred.Token != "" && cred.InNodeMetadata {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			workloadtoken.NodeMetadataKey: structpb.NewStringValue(cred.Token),
		}}
	}
	return n
}

// Fetch makes one FetchSecrets call.
func (c *Client) Fetch(ctx context.Context, nodeID string, cred Credential, names ...string) (map[string]*tlsv3.Secret, error) {
	resp, err := c.sds.FetchSecrets(cred.context(ctx), &discovery.DiscoveryRequest{
		Node: cred.node(nodeID), TypeUrl: SecretTypeURL, ResourceNames: names,
	})
	if err != nil {
		return nil, err
	}
	return decode(resp)
}

// Stream is an open StreamSecrets call. It is not safe for concurrent use.
type Stream struct {
	stream   secretv3.SecretDiscoveryService_StreamSecretsClient
	node     *core.Node
	names    []string
	nonce    string // of the last response received, ACKed or NACKed
	version  string // of the last response accepted: a NACK reports the version still in use
	sentNode bool
}

// Open starts a StreamSecrets call; nothing is requested until Request.
func (c *Client) Open(ctx context.Context, nodeID string, cred Credential) (*Stream, error) {
	s, err := c.sds.StreamSecrets(cred.context(ctx))
	if err != nil {
		return nil, err
	}
	return &Stream{stream: s, node: cred.node(nodeID)}, nil
}

// Request subscribes to names. Like Envoy it resends the full list it wants; pass
// replace=false to behave like MOSN and send only the new names.
func (s *Stream) Request(replace bool, names ...string) error {
	if replace {
		s.names = names
	} else {
		s.names = append(s.names, names...)
	}
	send := names
	if replace {
		send = s.names
	}
	return s.send(send, nil)
}

func (s *Stream) send(names []string, nack error) error {
	req := &discovery.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: names}
	if !s.sentNode {
		req.Node, s.sentNode = s.node, true
	}
	req.ResponseNonce, req.VersionInfo = s.nonce, s.version
	if nack != nil {
		req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	return s.stream.Send(req)
}

// Recv waits for the next response, ACKs it, and returns its secrets by name.
func (s *Stream) Recv() (map[string]*tlsv3.Secret, error) {
	resp, err := s.stream.Recv()
	if err != nil {
		return nil, err
	}
	secrets, err := decode(resp)
	s.nonce = resp.GetNonce()
	if err != nil {
		return nil, errors.Join(err, s.send(s.names, err))
	}
	s.version = resp.GetVersionInfo()
	return secrets, s.send(s.names, nil)
}

// CloseSend ends the request side of the stream.
func (s *Stream) CloseSend() error { return s.stream.CloseSend() }

func decode(resp *discovery.DiscoveryResponse) (map[string]*tlsv3.Secret, error) {
	out := make(map[string]*tlsv3.Secret, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		sec := &tlsv3.Secret{}
		if err := r.UnmarshalTo(sec); err != nil {
			return nil, fmt.Errorf("decoding secret: %w", err)
		}
		out[sec.GetName()] = sec
	}
	return out, nil
}

// Certificate turns a tls_certificate secret into a tls.Certificate (with Leaf set).
func Certificate(s *tlsv3.Secret) (tls.Certificate, error) {
	tc := s.GetTlsCertificate()
	if tc == nil {
		return tls.Certificate{}, fmt.Errorf("secret %q is not a tls_certificate", s.GetName())
	}
	kp, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("secret %q: %w", s.GetName(), err)
	}
	return kp, nil
}

// Roots turns a validation_context secret into its trusted CA certificates.
func Roots(s *tlsv3.Secret) ([]*x509.Certificate, error) {
	vc := s.GetValidationContext()
	if vc == nil {
		return nil, fmt.Errorf("secret %q is not a validation_context", s.GetName())
	}
	roots, err := pemcerts.Parse(vc.GetTrustedCa().GetInlineBytes())
	switch {
	case errors.Is(err, pemcerts.ErrNone):
		return nil, fmt.Errorf("secret %q has no trusted ca", s.GetName())
	case err != nil:
		return nil, fmt.Errorf("parsing trusted ca of %q: %w", s.GetName(), err)
	}
	return roots, nil
}

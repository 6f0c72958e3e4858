// Package sds serves Envoy's Secret Discovery Service v3 to the sidecars on this node: StreamSecrets,
// DeltaSecrets and FetchSecrets over the agent's Unix socket, built on go-control-plane's types.
//
// Every stream is authenticated once, on its first request, and serves one identity. It does not
// use go-control-plane's snapshot cache: that keys state by node ID only and cannot see the
// per-stream credential, so one pod could read another's secrets (SPIRE's SDS handler is written
// the same way for the same reason).
package sds

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/keysecrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// SecretTypeURL is the xDS type URL of an SDS secret.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Authenticator identifies a caller (see identity.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, ev identity.Evidence) (identity.Caller, error)
}

// Secrets is the agent's certificate store (see secrets.Manager).
type Secrets interface {
	Certificate(ctx context.Context, id spiffeid.ID, cred secrets.Credential) (*secrets.Certificate, error)
	Roots(ctx context.Context) ([]*x509.Certificate, error)
	SubscribeFunc(id spiffeid.ID, onChange func()) *secrets.Subscription
	Unsubscribe(s *secrets.Subscription)
}

// Observer is told about streams and pushes; metrics implement it.
type Observer interface {
	StreamOpened()
	StreamClosed()
	Pushed(name string)
	Nacked(names []string, detail string)
	Refused(code codes.Code)
	// Resumed counts silent streams answered without a request (see resume.go).
	Resumed()
}

// CallerLimiter bounds the streams one authenticated pod holds open; *sdslimits.Limiter
// satisfies it. AdmitCaller returns a gRPC status error when the caller is over its limit.
type CallerLimiter interface {
	AdmitCaller(caller string) (release func(), err error)
}

// Config configures a Server.
type Config struct {
	Auth    Authenticator
	Secrets Secrets
	Logger  *slog.Logger
	Observe Observer
	// Callers limits open streams per pod; nil means no limit.
	Callers CallerLimiter
	// KeySecrets serves KeySecret resources (names under KeySecretPrefix); nil serves none.
	KeySecrets KeySecrets
	// Peer tells what the connection of a stream says about the caller (per-pod socket, peer
	// credentials); nil means nothing.
	Peer func(ctx context.Context) identity.Peer
	// PeerIdentifies is true when peer credentials alone identify a caller (the peer and
	// token+peer modes), so that a silent stream can be resumed (see resume.go).
	PeerIdentifies bool
	// ResumeAfter is how long a silent SotW stream is given to ask before it is resumed; 0
	// disables resuming.
	ResumeAfter time.Duration
	// Remembered keeps the names each identity asked for; nil disables resuming.
	Remembered Remembered
	// Started tells the stream limits that a resumed stream is under way, as a first request
	// would (sdslimits.Started); nil if there are no limits.
	Started func(ctx context.Context)
	// Gateways serves the "kubernetes://" gateway certificate names; nil refuses them.
	Gateways GatewayCertificates
}

// Server implements secretv3.SecretDiscoveryServiceServer.
type Server struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	cfg      Config
	rendered renderCache
	keys     keyRenderer
}

// New returns a Server.
func New(cfg Config) *Server { return &Server{cfg: cfg} }

// authenticate identifies the caller from its connection and the token it sent, in gRPC metadata
// or, failing that, in the node metadata of its first request.
func (s *Server) authenticate(ctx context.Context, node *core.Node) (identity.Caller, error) {
	tok := identity.BearerToken(ctx)
	if tok == "" {
		tok = node.GetMetadata().GetFields()[workloadtoken.NodeMetadataKey].GetStringValue()
	}
	ev := identity.Gather(ctx, tok, s.cfg.Peer)
	caller, err := s.cfg.Auth.Authenticate(ctx, ev)
	if err != nil {
		s.cfg.Logger.Warn("sds caller refused", "node_id", node.GetId(), "pid", ev.Peer.PID, "err", err)
		return caller, err
	}
	return caller, nil
}

// toStatus maps the agent's errors to the gRPC codes a sidecar sees.
func (s *Server) toStatus(err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, identity.ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, identity.ErrNotOnNode), errors.Is(err, identity.ErrMismatch), errors.Is(err, errForeignName):
		code = codes.PermissionDenied
	case errors.Is(err, errUnknownName):
		code = codes.NotFound
	case errors.Is(err, errNoNames), errors.Is(err, errTooManyNames):
		code = codes.InvalidArgument
	case errors.Is(err, secrets.ErrRejected):
		code = status.Code(err)
		if code == codes.Unknown || code == codes.OK {
			code = codes.PermissionDenied
		}
	case errors.Is(err, keysecrets.ErrForbidden):
		code = codes.PermissionDenied
	case errors.Is(err, keysecrets.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, keysecrets.ErrTooLarge):
		code = codes.FailedPrecondition
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	default:
		code = codes.Unavailable
	}
	s.cfg.Observe.Refused(code)
	return status.Error(code, err.Error())
}

// MaxNamesPerRequest bounds the resource names of one request. An agent serves three names per
// caller ("default", "ROOTCA" and its SPIFFE ID), so an honest request names a few; a request
// with thousands only makes the agent check (and FetchSecrets answer) each one.
const MaxNamesPerRequest = 100

var (
	errNoNames      = errors.New("request names no resources")
	errTooManyNames = errors.New("too many resource names")
)

// checkNames admits the names of one request.
func checkNames(caller identity.Caller, names []string) error {
	if len(names) > MaxNamesPerRequest {
		return fmt.Errorf("%w: the request names %d resources, at most %d are allowed (this agent serves %q, %q and the caller's SPIFFE ID)",
			errTooManyNames, len(names), MaxNamesPerRequest, DefaultName, RootCAName)
	}
	for _, n := range names {
		if err := checkName(caller, n); err != nil {
			return err
		}
	}
	return nil
}

func nonce(n uint64) string { return strconv.FormatUint(n, 10) }

// streamEnded reports whether a Recv error is the peer going away rather than a failure.
func streamEnded(err error) bool {
	return errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled
}

// Package workloadapi serves the SPIFFE Workload API (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE_Workload_API.md)
// on the agent's sockets, next to SDS: X.509-SVIDs and bundles streamed from the agent's one
// certificate store (secrets.Manager), JWT-SVIDs minted by citadel and cached here, the JWT
// bundle and JWT-SVID validation with the attributes an app authorizes on. A small HTTP/JSON
// form of the JWT calls serves apps that do not speak gRPC (http.go).
//
// Callers are identified exactly as SDS identifies them (identity.Gather, identity.Authenticator):
// by their per-pod socket, their peer credentials or the token they send.
package workloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// SecurityHeader is the metadata every Workload API call carries (the spec's SSRF protection: a
// browser or a proxied request cannot set it).
const SecurityHeader = "workload.spiffe.io"

// Authenticator identifies a caller (see identity.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, ev identity.Evidence) (identity.Caller, error)
}

// Secrets is the agent's certificate store (see secrets.Manager).
type Secrets interface {
	Certificate(ctx context.Context, id spiffeid.ID, cred secrets.Credential) (*secrets.Certificate, error)
	Roots(ctx context.Context) ([]*x509.Certificate, error)
	Subscribe(id spiffeid.ID) *secrets.Subscription
	Unsubscribe(s *secrets.Subscription)
}

// Observer is told about calls; metrics implement it (metrics.WorkloadAPI). It must be safe for
// concurrent use.
type Observer interface {
	Called(method string, code codes.Code)
	WatchOpened(method string)
	WatchClosed(method string)
	JWTSVIDCache(hit bool)
}

// CallerLimiter bounds the streams one pod holds open (*sdslimits.Limiter, shared with SDS: a
// pod's SDS streams and Workload API watches count against one budget). AdmitCaller returns a
// gRPC status error when the caller is over its limit.
type CallerLimiter interface {
	AdmitCaller(caller string) (release func(), err error)
}

// Config configures a Server.
type Config struct {
	Auth    Authenticator
	Secrets Secrets
	JWTs    *JWTSVIDs
	Bundles *JWTBundles
	// Attributes maps a validated SPIFFE ID to named attributes; nil returns none.
	Attributes  *Attributes
	TrustDomain spiffeid.TrustDomain
	// Peer tells what a call's connection says about the caller (per-pod socket, peer
	// credentials); nil means nothing. The HTTP API puts the same information in its requests'
	// contexts (see HTTPConfig.ConnContext), so one function serves both.
	Peer   func(ctx context.Context) identity.Peer
	Logger *slog.Logger
	// Observe is told about calls; nil observes nothing.
	Observe Observer
	// Callers limits the open streams of a pod; nil means no limit.
	Callers CallerLimiter
}

// Server implements workloadpb.SpiffeWorkloadAPIServer.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	cfg Config
}

// New returns a Server; Register it on the agent's gRPC server.
func New(cfg Config) *Server {
	if cfg.Observe == nil {
		cfg.Observe = nopObserver{}
	}
	if cfg.JWTs != nil && cfg.JWTs.observe == nil {
		cfg.JWTs.observe = cfg.Observe
	}
	return &Server{cfg: cfg}
}

type nopObserver struct{}

func (nopObserver) Called(string, codes.Code) {}
func (nopObserver) WatchOpened(string)        {}
func (nopObserver) WatchClosed(string)        {}
func (nopObserver) JWTSVIDCache(bool)         {}

// called reports a finished gRPC call whose result is *err (a status error or nil).
func (s *Server) called(method string, err *error) { s.cfg.Observe.Called(method, status.Code(*err)) }

// watch admits a stream of caller against the per-pod limit and counts it open; the returned
// function ends both.
// openWatch authenticates a streaming call and admits it as one more watch of the caller's pod;
// errors are gRPC statuses, and done ends the watch.
func (s *Server) openWatch(ctx context.Context, method string) (caller identity.Caller, done func(), err error) {
	if caller, err = s.authenticate(ctx, method); err != nil {
		return caller, nil, grpcError(err)
	}
	if done, err = s.watch(method, caller); err != nil {
		return caller, nil, grpcError(err)
	}
	return caller, done, nil
}

func (s *Server) watch(method string, caller identity.Caller) (func(), error) {
	release := func() {}
	if s.cfg.Callers != nil {
		r, err := s.cfg.Callers.AdmitCaller(caller.Workload.PodKey() + "/" + caller.Workload.PodUID)
		if err != nil {
			return nil, err
		}
		release = r
	}
	s.cfg.Observe.WatchOpened(method)
	return func() { s.cfg.Observe.WatchClosed(method); release() }, nil
}

// Register serves s on srv.
func (s *Server) Register(srv grpc.ServiceRegistrar) {
	workloadpb.RegisterSpiffeWorkloadAPIServer(srv, s)
}

// Errors of the API, with the spec's (and SPIRE's) codes and messages. Every failure reaches a
// caller as one of these; the detail for operators goes to the log.
var (
	errNoHeader   = apiError{codes.InvalidArgument, "security header missing from request"}
	errNoIdentity = apiError{codes.PermissionDenied, "no identity issued"}
)

// apiError is an error with the gRPC code a caller sees (and the HTTP status it maps to).
type apiError struct {
	code codes.Code
	msg  string
}

func (e apiError) Error() string { return e.msg }

func invalid(msg string) error { return apiError{codes.InvalidArgument, msg} }

// grpcError turns an error of this package into a status.
func grpcError(err error) error {
	var ae apiError
	switch {
	case errors.As(err, &ae):
		return status.Error(ae.code, ae.msg)
	case errors.Is(err, secrets.ErrRejected):
		// citadel refused a certificate for good: its code, as SDS passes it on.
		code := status.Code(err)
		if code == codes.Unknown || code == codes.OK {
			code = codes.PermissionDenied
		}
		return status.Error(code, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if st, ok := status.FromError(err); ok {
		return st.Err() // already a status (a limit's refusal)
	}
	return status.Error(codes.Unavailable, err.Error())
}

// authenticate checks the security header and identifies the caller of a gRPC call.
func (s *Server) authenticate(ctx context.Context, method string) (identity.Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(SecurityHeader); len(v) != 1 || v[0] != "true" {
		return identity.Caller{}, errNoHeader
	}
	return s.identify(ctx, identity.BearerToken(ctx), method)
}

// identify authenticates the evidence of a call, gathered as SDS gathers it.
func (s *Server) identify(ctx context.Context, token, method string) (identity.Caller, error) {
	ev := identity.Gather(ctx, token, s.cfg.Peer)
	caller, err := s.cfg.Auth.Authenticate(ctx, ev)
	if err != nil {
		if ctx.Err() != nil {
			return caller, context.Cause(ctx)
		}
		s.cfg.Logger.Warn("workload api caller refused", "method", method, "pid", ev.Peer.PID, "err", err)
		return caller, errNoIdentity
	}
	return caller, nil
}

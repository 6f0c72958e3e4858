// Package grpcapi is citadel's gRPC edge: Istio's IstioCertificateService (so an unmodified
// istio-agent can use citadel), Portcullis' TrustBundleService and JWTSVIDService, and gRPC health. It is the only
// place where domain errors become gRPC status codes.
package grpcapi

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/issuer"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/trustbundle"
)

// Issuer runs the CreateCertificate decision; *issuer.Issuer satisfies it.
type Issuer interface {
	Issue(ctx context.Context, req issuer.Request) (issuer.Result, error)
}

// Bundles provides the current trust bundle; *trustbundle.Source satisfies it.
type Bundles interface {
	Get(ctx context.Context) (*trustbundle.Bundle, error)
}

// Config carries the server's dependencies.
type Config struct {
	Issuer  Issuer
	Bundles Bundles
	// JWTIssuer and JWTBundles serve JWTSVIDService; JWTBundles nil answers UNIMPLEMENTED.
	JWTIssuer  JWTIssuer
	JWTBundles JWTBundles
	Logger     *slog.Logger
	// Metrics counts refusals made before a handler runs; nil counts nothing (they are logged).
	Metrics *metrics.Metrics
}

// Server implements citadel's gRPC services.
type Server struct {
	authv1.UnimplementedIstioCertificateServiceServer
	cav1.UnimplementedTrustBundleServiceServer
	cfg Config
}

// New builds a Server.
func New(cfg Config) *Server { return &Server{cfg: cfg} }

// Methods that only node agents may call, and the health methods open to anyone (kubelet probes
// and load balancers carry no client certificate).
var (
	nodeAgentMethods = []string{
		authv1.IstioCertificateService_CreateCertificate_FullMethodName,
		cav1.TrustBundleService_GetTrustBundle_FullMethodName,
		cav1.JWTSVIDService_MintJWTSVID_FullMethodName,
		cav1.JWTSVIDService_GetJWTBundle_FullMethodName,
	}
	healthMethods = []string{
		healthpb.Health_Check_FullMethodName,
		healthpb.Health_Watch_FullMethodName,
		healthpb.Health_List_FullMethodName,
	}
)

// Authorize admits node agents on citadel's methods and nobody on anything else.
func Authorize(_ context.Context, id spiffeid.ID, method string) error {
	for _, m := range nodeAgentMethods {
		if m == method {
			if _, ok := servicetls.NodeOf(id); ok {
				return nil
			}
			return errors.New("only node agents may call this method")
		}
	}
	return errors.New("method not open to any caller")
}

// NewGRPCServer builds the gRPC server with mTLS credentials (see ServerCredentials), the
// authorization interceptors (their refusals logged and counted) and every service registered.
func NewGRPCServer(creds credentials.TransportCredentials, srv *Server, hs *health.Server) *grpc.Server {
	opts := append([]grpc.ServerOption{grpc.Creds(creds)}, servicetls.ObservedInterceptors(Authorize, srv.observeRefusal, healthMethods...)...)
	g := grpc.NewServer(opts...)
	authv1.RegisterIstioCertificateServiceServer(g, srv)
	cav1.RegisterTrustBundleServiceServer(g, srv)
	if srv.cfg.JWTIssuer != nil {
		cav1.RegisterJWTSVIDServiceServer(g, &jwtServer{cfg: srv.cfg})
	}
	healthpb.RegisterHealthServer(g, hs)
	return g
}

// CreateCertificate signs the CSR for the workload the token names, if the calling node agent may
// obtain that identity.
func (s *Server) CreateCertificate(ctx context.Context, req *authv1.IstioCertificateRequest) (*authv1.IstioCertificateResponse, error) {
	caller, token, err := nodeAgentCall(ctx)
	if err != nil {
		return nil, err
	}
	ttl, err := issuer.ValidityFromSeconds(req.GetValidityDuration())
	var res issuer.Result
	if err == nil {
		res, err = s.cfg.Issuer.Issue(ctx, issuer.Request{
			Caller:  caller,
			Token:   token,
			CSR:     req.GetCsr(),
			TTL:     ttl,
			Renewal: req.GetMetadata(),
		})
	}
	if err != nil {
		st := toStatus(err)
		s.cfg.Logger.Info("certificate refused", "peer", caller.String(), "code", st.Code().String(), "err", err)
		return nil, st.Err()
	}
	s.cfg.Logger.Debug("certificate issued", "peer", caller.String(), "identity", res.Identity.String(), "cached", res.Cached)
	return &authv1.IstioCertificateResponse{CertChain: res.Chain}, nil
}

// GetTrustBundle returns the workload roots.
func (s *Server) GetTrustBundle(ctx context.Context, _ *cav1.GetTrustBundleRequest) (*cav1.GetTrustBundleResponse, error) {
	b, err := s.cfg.Bundles.Get(ctx)
	if err != nil {
		return nil, toStatus(err).Err()
	}
	return &cav1.GetTrustBundleResponse{TrustDomain: b.TrustDomain, RootCertificates: b.Roots, Version: b.Version}, nil
}

// nodeAgentCall reads who is calling (the peer's control-plane identity) and the workload token it
// forwards ("" if none); either failing is an Unauthenticated status.
func nodeAgentCall(ctx context.Context) (spiffeid.ID, string, error) {
	caller, err := servicetls.PeerID(ctx)
	if err != nil {
		return spiffeid.ID{}, "", status.Error(codes.Unauthenticated, err.Error())
	}
	token, err := bearerToken(ctx)
	if err != nil {
		return spiffeid.ID{}, "", status.Error(codes.Unauthenticated, err.Error())
	}
	return caller, token, nil
}

// bearerToken reads "authorization: Bearer <jwt>"; no header yields "" (the issuer refuses that
// with its own message).
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(workloadtoken.GRPCMetadataKey)
	if len(vals) == 0 {
		return "", nil
	}
	if len(vals) > 1 {
		return "", errors.New("more than one authorization metadata value")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", errors.New(`authorization metadata must be "Bearer <workload token>"`)
	}
	return strings.TrimSpace(token), nil
}

// toStatus maps domain errors to status codes; the message is the error's own text.
func toStatus(err error) *status.Status {
	if code, ok := jwtCode(err); ok {
		return status.New(code, err.Error())
	}
	code := codes.Internal
	switch {
	case errors.Is(err, issuer.ErrNotNodeAgent), errors.Is(err, issuer.ErrForbidden):
		code = codes.PermissionDenied
	case errors.Is(err, issuer.ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, issuer.ErrInvalidCSR), errors.Is(err, issuer.ErrInvalidTTL):
		code = codes.InvalidArgument
	case errors.Is(err, issuer.ErrRateLimited):
		code = codes.ResourceExhausted
	case errors.Is(err, issuer.ErrPodsNotSynced), errors.Is(err, issuer.ErrKMSUnavailable),
		errors.Is(err, trustbundle.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.New(code, err.Error())
}

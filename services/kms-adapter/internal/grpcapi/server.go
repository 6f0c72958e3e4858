// Package grpcapi is kms-adapter's gRPC edge: it serves KeyManagementService over the backend,
// admits only citadel, and is the only place where kms errors become gRPC status codes.
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmsmetrics"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/revocation"
)

// openMethods need no client certificate: probes and load balancers check health without one.
var openMethods = []string{
	healthgrpc.Health_Check_FullMethodName,
	healthgrpc.Health_Watch_FullMethodName,
	healthgrpc.Health_List_FullMethodName,
}

// Config carries the server's dependencies.
type Config struct {
	Backend kms.Backend
	Logger  *slog.Logger
	// Rotator is the backend's CA rotation, nil if kms-adapter does not rotate this backend's CA.
	Rotator kms.Rotator
	// Announce publishes events; nil when events are disabled.
	Announce Announcer
	// Revocations is the durable revocation state; required.
	Revocations Revocations
	// JWTKeys signs JWT-SVIDs; nil leaves JWTService and the JWT admin RPCs unimplemented.
	JWTKeys JWTKeys
	// JWTMetrics counts JWT-SVID signatures; nil counts nothing.
	JWTMetrics *kmsmetrics.JWT
}

// Revocations is the durable revocation state (*revocation.Store).
type Revocations interface {
	// Revoke records, durably, that every certificate of id issued until now is revoked.
	Revoke(id spiffeid.ID) (revocation.Entry, error)
	Snapshot() revocation.State
}

// Server implements kmsv1.KeyManagementServiceServer.
type Server struct {
	kmsv1.UnimplementedKeyManagementServiceServer
	backend     kms.Backend
	revocations Revocations
	logger      *slog.Logger
	admin       *adminServer
	jwt         *jwtServer
}

// New builds the KMS API over cfg.Backend.
func New(cfg Config) *Server {
	s := &Server{backend: cfg.Backend, revocations: cfg.Revocations, logger: cfg.Logger}
	s.admin = &adminServer{cfg: cfg, status: s.status}
	if cfg.JWTKeys != nil {
		s.jwt = &jwtServer{keys: cfg.JWTKeys, metrics: cfg.JWTMetrics, logger: cfg.Logger, status: s.status}
	}
	return s
}

// GRPCServer builds the gRPC server with creds, this API (citadel only), the admin API (the admin
// identity only) and health (open to all).
func (s *Server) GRPCServer(creds credentials.TransportCredentials, hs *health.Server) *grpc.Server {
	opts := append([]grpc.ServerOption{grpc.Creds(creds)}, servicetls.Interceptors(authorize, openMethods...)...)
	srv := grpc.NewServer(opts...)
	kmsv1.RegisterKeyManagementServiceServer(srv, s)
	kmsv1.RegisterKMSAdminServiceServer(srv, s.admin)
	if s.jwt != nil {
		kmsv1.RegisterJWTServiceServer(srv, s.jwt)
	}
	hs.SetServingStatus(kmsv1.KeyManagementService_ServiceDesc.ServiceName, healthgrpc.HealthCheckResponse_SERVING)
	healthgrpc.RegisterHealthServer(srv, hs)
	return srv
}

var (
	signers = servicetls.AllowServices(servicetls.Citadel)
	admins  = servicetls.AllowServices(servicetls.Admin)
)

// authorize admits citadel to the KMS API and JWTService, the operator to the admin API, and no
// one to both.
func authorize(ctx context.Context, peer spiffeid.ID, method string) error {
	if strings.HasPrefix(method, "/"+kmsv1.KMSAdminService_ServiceDesc.ServiceName+"/") {
		return admins(ctx, peer, method)
	}
	return signers(ctx, peer, method)
}

// SignCertificate implements kmsv1.KeyManagementServiceServer.
func (s *Server) SignCertificate(ctx context.Context, req *kmsv1.SignCertificateRequest) (*kmsv1.SignCertificateResponse, error) {
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "spiffe_id %q: %v", req.GetSpiffeId(), err)
	}
	if req.GetTtlSeconds() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "ttl_seconds %d: must not be negative (0 asks for the default)", req.GetTtlSeconds())
	}
	// Only decoded here: the backend checks the signature and key (kms.Backend contract).
	csr, err := kms.DecodeCSR(req.GetCsr())
	if err != nil {
		return nil, s.status(ctx, "parsing csr for "+id.String(), err)
	}
	chain, err := s.backend.Sign(ctx, kms.SignRequest{CSR: csr, ID: id, TTL: secondsToDuration(req.GetTtlSeconds())})
	if err != nil {
		return nil, s.status(ctx, "signing certificate for "+id.String(), err)
	}
	resp := &kmsv1.SignCertificateResponse{CertChain: make([][]byte, len(chain))}
	for i, cert := range chain {
		resp.CertChain[i] = cert.Raw
	}
	caller, _ := servicetls.PeerID(ctx)
	// The issuance record: who asked, for whom, which certificate.
	s.logger.Info("certificate issued", logkey.SPIFFEID, id.String(), logkey.Caller, caller.String(),
		logkey.Serial, fmt.Sprintf("%x", chain[0].SerialNumber), logkey.NotAfter, chain[0].NotAfter)
	return resp, nil
}

// GetTrustBundle implements kmsv1.KeyManagementServiceServer.
func (s *Server) GetTrustBundle(ctx context.Context, _ *kmsv1.GetTrustBundleRequest) (*kmsv1.GetTrustBundleResponse, error) {
	bundle, err := s.backend.TrustBundle(ctx)
	if err != nil {
		return nil, s.status(ctx, "reading trust bundle", err)
	}
	resp := &kmsv1.GetTrustBundleResponse{TrustDomain: bundle.TrustDomain.String(), RootCertificates: make([][]byte, len(bundle.Roots))}
	for i, root := range bundle.Roots {
		resp.RootCertificates[i] = root.Raw
	}
	resp.Version = bundle.Version
	return resp, nil
}

// GetRevocations implements kmsv1.KeyManagementServiceServer.
func (s *Server) GetRevocations(context.Context, *kmsv1.GetRevocationsRequest) (*kmsv1.GetRevocationsResponse, error) {
	st := s.revocations.Snapshot()
	resp := &kmsv1.GetRevocationsResponse{Version: st.Version, Revocations: make([]*kmsv1.Revocation, len(st.Entries))}
	for i, e := range st.Entries {
		r := &kmsv1.Revocation{SpiffeId: e.ID.String(), RevokedAt: timestamppb.New(e.RevokedAt),
			NotBeforeCutoff: timestamppb.New(e.Cutoff), ExpiresAt: timestamppb.New(e.ExpiresAt)}
		for _, serial := range e.Reissued {
			r.ReissuedSerials = append(r.ReissuedSerials, serial.Bytes())
		}
		resp.Revocations[i] = r
	}
	return resp, nil
}

// status maps a kms error to a gRPC status; failures that are not the caller's are logged.
func (s *Server) status(ctx context.Context, op string, err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, kms.ErrInvalidCSR), errors.Is(err, kms.ErrInvalidIdentity):
		return status.Errorf(codes.InvalidArgument, "%s: %v", op, err)
	case errors.Is(err, kms.ErrRotationState):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", op, err)
	case errors.Is(err, kms.ErrUnavailable):
		code = codes.Unavailable
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return status.FromContextError(err).Err()
	default:
		code = codes.Internal
	}
	s.logger.Error(op+" failed", logkey.Err, err)
	return status.Errorf(code, "%s: %v", op, err)
}

// secondsToDuration converts without overflow; the backend clamps whatever is too long.
func secondsToDuration(s int64) time.Duration {
	if s > math.MaxInt64/int64(time.Second) {
		return math.MaxInt64
	}
	return time.Duration(s) * time.Second
}

package grpcapi

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/issuer"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/jwtbundle"
)

// JWTIssuer mints JWT-SVIDs; *issuer.Issuer satisfies it.
type JWTIssuer interface {
	MintJWTSVID(ctx context.Context, req issuer.JWTRequest) (issuer.JWTResult, error)
}

// JWTBundles provides the current JWT bundle; *jwtbundle.Source satisfies it.
type JWTBundles interface {
	Get(ctx context.Context) (*jwtbundle.Bundle, error)
}

// jwtServer implements cav1.JWTSVIDServiceServer for node agents.
type jwtServer struct {
	cav1.UnimplementedJWTSVIDServiceServer
	cfg Config
}

// MintJWTSVID mints a JWT-SVID for the workload the token (or the agent's attested-pod statement)
// names, if the calling node agent may obtain that identity: the same decision as
// CreateCertificate.
func (s *jwtServer) MintJWTSVID(ctx context.Context, req *cav1.MintJWTSVIDRequest) (*cav1.MintJWTSVIDResponse, error) {
	caller, token, err := nodeAgentCall(ctx)
	if err != nil {
		return nil, err
	}
	ttl, err := issuer.JWTTTLFromSeconds(req.GetTtlSeconds())
	var res issuer.JWTResult
	if err == nil {
		res, err = s.cfg.JWTIssuer.MintJWTSVID(ctx, issuer.JWTRequest{
			Caller: caller, Token: token, Metadata: req.GetMetadata(), Audiences: req.GetAudiences(), TTL: ttl,
		})
	}
	if err != nil {
		st := toStatus(err)
		s.cfg.Logger.Info("jwt-svid refused", "peer", caller.String(), "code", st.Code().String(), "err", err)
		return nil, st.Err()
	}
	s.cfg.Logger.Debug("jwt-svid minted", "peer", caller.String(), "identity", res.Identity.String(), "audiences", req.GetAudiences())
	return &cav1.MintJWTSVIDResponse{SpiffeId: res.Identity.String(), Token: res.Token, ExpiresAt: timestamppb.New(res.ExpiresAt)}, nil
}

// GetJWTBundle returns the keys JWT-SVIDs of the trust domain verify with, from citadel's copy.
func (s *jwtServer) GetJWTBundle(ctx context.Context, _ *cav1.GetJWTBundleRequest) (*cav1.GetJWTBundleResponse, error) {
	if s.cfg.JWTBundles == nil {
		return nil, toStatus(issuer.ErrJWTDisabled).Err()
	}
	b, err := s.cfg.JWTBundles.Get(ctx)
	if err != nil {
		return nil, toStatus(err).Err()
	}
	return &cav1.GetJWTBundleResponse{TrustDomain: b.TrustDomain, Jwks: b.JWKS, Version: b.Version}, nil
}

// jwtCode maps the JWT-only domain errors; toStatus calls it first.
func jwtCode(err error) (codes.Code, bool) {
	switch {
	case errors.Is(err, issuer.ErrInvalidAudience):
		return codes.InvalidArgument, true
	case errors.Is(err, issuer.ErrJWTDisabled):
		return codes.Unimplemented, true
	case errors.Is(err, jwtbundle.ErrUnavailable):
		return codes.Unavailable, true
	}
	return codes.OK, false
}

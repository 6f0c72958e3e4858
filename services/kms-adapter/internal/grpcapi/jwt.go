package grpcapi

import (
	"context"
	"errors"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/jwtkeys"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmsmetrics"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
)

// JWTKeys signs JWT-SVIDs and rotates their keys; *jwtkeys.Manager satisfies it.
type JWTKeys interface {
	Sign(req jwtkeys.SignRequest) (jwtkeys.Token, error)
	Bundle() (jwtkeys.Bundle, error)
	Status() jwtkeys.Status
	Prepare(ctx context.Context) (jwtkeys.Status, error)
	Activate(ctx context.Context) (jwtkeys.Status, error)
	Retire(ctx context.Context, force bool) (jwtkeys.Status, error)
}

// jwtServer implements kmsv1.JWTServiceServer (citadel only, like KeyManagementService).
type jwtServer struct {
	kmsv1.UnimplementedJWTServiceServer
	keys    JWTKeys
	metrics *kmsmetrics.JWT
	logger  *slog.Logger
	status  func(ctx context.Context, op string, err error) error
}

func (s *jwtServer) SignJWTSVID(ctx context.Context, req *kmsv1.SignJWTSVIDRequest) (*kmsv1.SignJWTSVIDResponse, error) {
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		s.count(kmsmetrics.ResultInvalid)
		return nil, status.Errorf(codes.InvalidArgument, "spiffe_id %q: %v", req.GetSpiffeId(), err)
	}
	if req.GetTtlSeconds() < 0 {
		s.count(kmsmetrics.ResultInvalid)
		return nil, status.Errorf(codes.InvalidArgument, "ttl_seconds %d: must not be negative (0 asks for the maximum)", req.GetTtlSeconds())
	}
	tok, err := s.keys.Sign(jwtkeys.SignRequest{ID: id, Audiences: req.GetAudiences(), TTL: secondsToDuration(req.GetTtlSeconds())})
	if err != nil {
		if errors.Is(err, jwtkeys.ErrInvalidRequest) {
			s.count(kmsmetrics.ResultInvalid)
			return nil, status.Errorf(codes.InvalidArgument, "signing jwt-svid for %s: %v", id, err)
		}
		s.count(kmsmetrics.ResultError)
		return nil, s.status(ctx, "signing jwt-svid for "+id.String(), err)
	}
	s.count(kmsmetrics.ResultOK)
	caller, _ := servicetls.PeerID(ctx)
	s.logger.Debug("jwt-svid signed", logkey.SPIFFEID, id.String(), logkey.Caller, caller.String(),
		"audiences", req.GetAudiences(), "jwt_key_id", tok.KeyID, logkey.NotAfter, tok.ExpiresAt)
	return &kmsv1.SignJWTSVIDResponse{Token: tok.Token, ExpiresAt: timestamppb.New(tok.ExpiresAt)}, nil
}

func (s *jwtServer) count(result string) {
	if s.metrics != nil {
		s.metrics.Signatures.WithLabelValues(result).Inc()
	}
}

func (s *jwtServer) GetJWTBundle(ctx context.Context, _ *kmsv1.GetJWTBundleRequest) (*kmsv1.GetJWTBundleResponse, error) {
	b, err := s.keys.Bundle()
	if err != nil {
		return nil, s.status(ctx, "reading the jwt bundle", err)
	}
	return &kmsv1.GetJWTBundleResponse{TrustDomain: b.TrustDomain.String(), Jwks: b.JWKS, Version: b.Version}, nil
}

func (a *adminServer) jwtKeys() (JWTKeys, error) {
	if a.cfg.JWTKeys == nil {
		return nil, status.Error(codes.Unimplemented, "jwt-svid signing is not enabled on this kms-adapter")
	}
	return a.cfg.JWTKeys, nil
}

func (a *adminServer) GetJWTKeyStatus(context.Context, *kmsv1.GetJWTKeyStatusRequest) (*kmsv1.JWTKeyStatus, error) {
	k, err := a.jwtKeys()
	if err != nil {
		return nil, err
	}
	return jwtKeyStatus(k.Status()), nil
}

func (a *adminServer) RotateJWTKey(ctx context.Context, req *kmsv1.RotateJWTKeyRequest) (*kmsv1.JWTKeyStatus, error) {
	k, err := a.jwtKeys()
	if err != nil {
		return nil, err
	}
	var st jwtkeys.Status
	switch req.GetStep() {
	case kmsv1.RotationStep_ROTATION_STEP_PREPARE:
		st, err = k.Prepare(ctx)
	case kmsv1.RotationStep_ROTATION_STEP_ACTIVATE:
		st, err = k.Activate(ctx)
	case kmsv1.RotationStep_ROTATION_STEP_RETIRE:
		st, err = k.Retire(ctx, req.GetForce())
	default:
		return nil, status.Errorf(codes.InvalidArgument, "step %s: want PREPARE, ACTIVATE or RETIRE", req.GetStep())
	}
	if err != nil {
		return nil, a.status(ctx, "rotating the jwt key ("+req.GetStep().String()+")", err)
	}
	caller, _ := servicetls.PeerID(ctx)
	a.cfg.Logger.Info("jwt key rotation step taken by an operator", "step", req.GetStep().String(), "force", req.GetForce(),
		logkey.Caller, caller.String(), "bundle_version", st.BundleVersion)
	return jwtKeyStatus(st), nil
}

func jwtKeyStatus(st jwtkeys.Status) *kmsv1.JWTKeyStatus {
	out := &kmsv1.JWTKeyStatus{BundleVersion: st.BundleVersion}
	for _, k := range st.Keys {
		info := &kmsv1.JWTKeyInfo{KeyId: k.ID, State: k.State, CreatedAt: timestamppb.New(k.CreatedAt)}
		if !k.UsableUntil.IsZero() {
			info.UsableUntil = timestamppb.New(k.UsableUntil)
		}
		out.Keys = append(out.Keys, info)
	}
	if !st.NextStepAt.IsZero() {
		out.NextStepAt = timestamppb.New(st.NextStepAt)
	}
	return out
}

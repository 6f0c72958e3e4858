package issuer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/jwtaudience"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// ErrInvalidAudience: a JWT-SVID request names no audience, too many, or a bad one.
var ErrInvalidAudience = errors.New("invalid jwt-svid audience")

// ErrJWTDisabled: citadel was built without a JWT signer.
var ErrJWTDisabled = errors.New("jwt-svid minting is not enabled")

// JWTKMS is the part of kms-adapter's JWTService the issuer uses; kmsv1.JWTServiceClient
// satisfies it.
type JWTKMS interface {
	SignJWTSVID(ctx context.Context, in *kmsv1.SignJWTSVIDRequest, opts ...grpc.CallOption) (*kmsv1.SignJWTSVIDResponse, error)
}

// JWTRequest is one MintJWTSVID call.
type JWTRequest struct {
	Caller    spiffeid.ID
	Token     string           // the workload token, "" if none was sent
	Metadata  *structpb.Struct // the agent's attested-pod statement, without a token
	Audiences []string
	TTL       time.Duration // 0 means the default
}

// JWTResult is a minted JWT-SVID.
type JWTResult struct {
	Identity  spiffeid.ID
	Token     string
	ExpiresAt time.Time
}

// MintJWTSVID authorizes the workload exactly as Issue does (AuthorizeWorkload) and has
// kms-adapter sign a JWT-SVID for it. Nothing is cached here: a token is bound to its audiences
// and short-lived, and the agent caches it (by identity and audiences) for half its life.
func (i *Issuer) MintJWTSVID(ctx context.Context, req JWTRequest) (JWTResult, error) {
	res, err := i.mintJWTSVID(ctx, req)
	result := metrics.ResultOK
	switch {
	case err == nil:
	case errors.Is(err, ErrUnauthenticated), errors.Is(err, ErrForbidden), errors.Is(err, ErrNotNodeAgent):
		result = metrics.ResultRefused
	case errors.Is(err, ErrInvalidAudience), errors.Is(err, ErrInvalidTTL):
		result = metrics.ResultInvalid
	case errors.Is(err, ErrRateLimited):
		result = metrics.ResultRateLimited
	default:
		result = metrics.ResultError
	}
	i.cfg.Metrics.JWTMints.WithLabelValues(result).Inc()
	return res, err
}

func (i *Issuer) mintJWTSVID(ctx context.Context, req JWTRequest) (JWTResult, error) {
	if i.cfg.JWTKMS == nil {
		return JWTResult{}, ErrJWTDisabled
	}
	id, err := i.AuthorizeWorkload(ctx, req.Caller, req.Token, req.Metadata)
	if err != nil {
		return JWTResult{}, err
	}
	if err := checkAudiences(req.Audiences); err != nil {
		return JWTResult{}, err
	}
	ttl, err := i.jwtTTL(req.TTL)
	if err != nil {
		return JWTResult{}, err
	}
	node, _ := servicetls.NodeOf(req.Caller) // AuthorizeWorkload checked it is a node agent
	if !i.jwtLimits.allow(node, i.cfg.Clock.Now()) {
		return JWTResult{}, fmt.Errorf("%w: node %q may mint %.0f jwt-svids per second (burst %d); retry with backoff",
			ErrRateLimited, node, i.cfg.NodeSignRate, i.cfg.NodeSignBurst)
	}
	sctx, cancel := context.WithTimeout(ctx, i.cfg.SignTimeout)
	defer cancel()
	start := time.Now()
	resp, err := i.cfg.JWTKMS.SignJWTSVID(sctx, &kmsv1.SignJWTSVIDRequest{
		SpiffeId: id.String(), Audiences: req.Audiences, TtlSeconds: int64(ttl / time.Second),
	})
	i.cfg.Metrics.KMSJWTSignDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		switch st := status.Convert(err); st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return JWTResult{}, fmt.Errorf("%w: %s", ErrKMSUnavailable, st.Message())
		default:
			return JWTResult{}, fmt.Errorf("%w: kms-adapter: %s: %s", ErrSigning, st.Code(), st.Message())
		}
	}
	// Make sure kms-adapter signed what was asked before handing it out (the signature itself is
	// the verifiers' business: they hold the bundle).
	svid, err := jwtsvid.ParseInsecure(resp.GetToken(), req.Audiences)
	if err != nil {
		return JWTResult{}, fmt.Errorf("%w: kms-adapter returned an unreadable jwt-svid: %v", ErrSigning, err)
	}
	if svid.ID != id {
		return JWTResult{}, fmt.Errorf("%w: kms-adapter returned a jwt-svid for %s, want %s", ErrSigning, svid.ID, id)
	}
	return JWTResult{Identity: id, Token: resp.GetToken(), ExpiresAt: svid.Expiry}, nil
}

// checkAudiences enforces the audience rule kms-adapter enforces too (libs/jwtaudience): a request
// it would refuse is refused here with the same words.
func checkAudiences(auds []string) error {
	if err := jwtaudience.Check(auds); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidAudience, err)
	}
	return nil
}

// JWTTTLFromSeconds turns a MintJWTSVID request's ttl_seconds (0 for the default) into a duration,
// refusing what is negative or does not fit; anything longer than the maximum is clamped later.
func JWTTTLFromSeconds(seconds int64) (time.Duration, error) {
	if seconds < 0 || seconds > MaxValiditySeconds {
		return 0, fmt.Errorf("%w: ttl_seconds %d is out of range: want 0 (the default) to %d seconds, and anything above the maximum is clamped to it",
			ErrInvalidTTL, seconds, MaxValiditySeconds)
	}
	return time.Duration(seconds) * time.Second, nil
}

// jwtTTL applies the JWT default and ceiling to a requested lifetime.
func (i *Issuer) jwtTTL(requested time.Duration) (time.Duration, error) {
	switch {
	case requested < 0:
		return 0, fmt.Errorf("%w: %s is negative", ErrInvalidTTL, requested)
	case requested == 0:
		return i.cfg.JWTDefaultTTL, nil
	case requested > i.cfg.JWTMaxTTL:
		return i.cfg.JWTMaxTTL, nil
	}
	return requested, nil
}

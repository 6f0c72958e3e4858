package citadelclient

import (
	"context"
	"fmt"
	"time"

	cav1 "github.com/portcullis-mesh/portcullis/proto/portcullis/ca/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// JWTSVID is a token citadel minted.
type JWTSVID struct {
	SPIFFEID  string
	Token     string
	ExpiresAt time.Time
}

// MintJWTSVID asks citadel for a JWT-SVID for the workload cred names (its attested pod or its
// token; a renewal proof is not accepted for JWTs), valid for audiences. ttl 0 asks for
// citadel's default. Refusals that retrying cannot fix wrap secrets.ErrRejected.
func (c *Client) MintJWTSVID(ctx context.Context, cred secrets.Credential, audiences []string, ttl time.Duration) (JWTSVID, error) {
	if cred.Pod == nil && cred.Token == "" {
		return JWTSVID{}, fmt.Errorf("citadel MintJWTSVID: %w: the workload has neither an attested pod nor a token", secrets.ErrRejected)
	}
	req := &cav1.MintJWTSVIDRequest{Audiences: audiences, TtlSeconds: int64(ttl / time.Second)}
	ctx, req.Metadata = authorize(ctx, cred.Pod, cred.Token)
	resp, err := c.jwt.MintJWTSVID(ctx, req)
	if err != nil {
		return JWTSVID{}, classify("citadel MintJWTSVID", err)
	}
	if resp.GetToken() == "" || resp.GetExpiresAt() == nil {
		return JWTSVID{}, fmt.Errorf("citadel MintJWTSVID returned no token or no expiry")
	}
	return JWTSVID{SPIFFEID: resp.GetSpiffeId(), Token: resp.GetToken(), ExpiresAt: resp.GetExpiresAt().AsTime()}, nil
}

// JWTBundle fetches the trust domain's JWT-SVID keys: the trust domain, its RFC 7517 JWK Set
// and the set's version.
func (c *Client) JWTBundle(ctx context.Context) (trustDomain string, jwks []byte, version uint64, err error) {
	resp, err := c.jwt.GetJWTBundle(ctx, &cav1.GetJWTBundleRequest{})
	if err != nil {
		return "", nil, 0, classify("citadel GetJWTBundle", err)
	}
	return resp.GetTrustDomain(), resp.GetJwks(), resp.GetVersion(), nil
}

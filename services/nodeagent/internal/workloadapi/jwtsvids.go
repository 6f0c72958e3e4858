package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/expirycache"
	"github.com/portcullis-mesh/portcullis/libs/jwtaudience"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/citadelclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// Minter has citadel mint a JWT-SVID (citadelclient.Client). ttl 0 asks for citadel's default.
// Errors that asking again cannot fix wrap secrets.ErrRejected.
type Minter interface {
	MintJWTSVID(ctx context.Context, cred secrets.Credential, audiences []string, ttl time.Duration) (citadelclient.JWTSVID, error)
}

// Limits of a JWT-SVID request: libs/jwtaudience's, citadel's, so that what citadel would refuse
// is refused here before the call.
const (
	MaxAudiences      = jwtaudience.MaxAudiences
	MaxAudienceLength = jwtaudience.MaxLength
	// DefaultJWTCacheSize bounds the cached JWT-SVIDs: a node's pods times the audiences each
	// talks to, with room to spare; a token is about 1 KiB.
	DefaultJWTCacheSize = 10000
	mintTimeout         = 30 * time.Second
)

// JWTSVIDs hands out JWT-SVIDs, minted by citadel and cached by (identity, audiences) until half
// their life, as SPIRE's agent does: a workload that asks again gets a token with at least half
// its life left. Concurrent identical misses make one call to citadel. It is safe for
// concurrent use.
type JWTSVIDs struct {
	minter Minter
	clock  clock.PassiveClock
	logger *slog.Logger
	cache  *expirycache.Cache[string, citadelclient.JWTSVID]
	flight singleflight.Group
	// observe is the Server's Observer (set by New).
	observe interface{ JWTSVIDCache(hit bool) }
}

// JWTSVIDsConfig configures NewJWTSVIDs.
type JWTSVIDsConfig struct {
	Minter Minter
	Clock  clock.PassiveClock
	Logger *slog.Logger
	// CacheSize bounds the cache; 0 means DefaultJWTCacheSize.
	CacheSize int
}

// NewJWTSVIDs returns an empty cache in front of cfg.Minter.
func NewJWTSVIDs(cfg JWTSVIDsConfig) *JWTSVIDs {
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultJWTCacheSize
	}
	return &JWTSVIDs{minter: cfg.Minter, clock: cfg.Clock, logger: cfg.Logger,
		cache: expirycache.New[string, citadelclient.JWTSVID](cfg.CacheSize)}
}

// checkAudiences admits the audiences of a request and returns them sorted, without duplicates.
func checkAudiences(audiences []string) ([]string, error) {
	if len(audiences) == 0 {
		return nil, invalid("audience must be specified")
	}
	out := slices.Clone(audiences)
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > MaxAudiences {
		return nil, invalid(fmt.Sprintf("too many audiences: %d, at most %d", len(out), MaxAudiences))
	}
	for _, a := range out {
		switch {
		case strings.TrimSpace(a) == "":
			return nil, invalid("audience must not be empty")
		case len(a) > MaxAudienceLength:
			return nil, invalid(fmt.Sprintf("audience of %d bytes is too long (at most %d)", len(a), MaxAudienceLength))
		}
	}
	return out, nil
}

// Get returns a JWT-SVID for caller and audiences (checked with checkAudiences).
func (j *JWTSVIDs) Get(ctx context.Context, caller identity.Caller, audiences []string) (citadelclient.JWTSVID, error) {
	auds, err := checkAudiences(audiences)
	if err != nil {
		return citadelclient.JWTSVID{}, err
	}
	// The token names the identity and the audiences only: every pod of the identity may share it.
	key := caller.ID.String() + "\x00" + strings.Join(auds, "\x00")
	svid, hit := j.cache.Get(key, j.clock.Now())
	if j.observe != nil {
		j.observe.JWTSVIDCache(hit)
	}
	if hit {
		return svid, nil
	}
	cred := secrets.Credential{Pod: caller.Pod, Token: caller.Token}
	ch := j.flight.DoChan(key, func() (any, error) {
		// Not the caller's context: the flight serves every caller waiting for it.
		ctx, cancel := context.WithTimeout(context.Background(), mintTimeout)
		defer cancel()
		start := j.clock.Now()
		svid, err := j.minter.MintJWTSVID(ctx, cred, auds, 0)
		if err != nil {
			return nil, err
		}
		if svid.SPIFFEID != caller.ID.String() {
			return nil, fmt.Errorf("citadel minted a JWT-SVID for %s, want %s", svid.SPIFFEID, caller.ID)
		}
		if !svid.ExpiresAt.After(start) {
			return nil, fmt.Errorf("citadel minted a JWT-SVID that expired at %s", svid.ExpiresAt)
		}
		j.cache.Put(key, svid, start.Add(svid.ExpiresAt.Sub(start)/2), start)
		return svid, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return citadelclient.JWTSVID{}, mintError(r.Err)
		}
		return r.Val.(citadelclient.JWTSVID), nil
	case <-ctx.Done():
		return citadelclient.JWTSVID{}, context.Cause(ctx)
	}
}

// mintError passes on citadel's refusals with their code; anything else is Unavailable.
func mintError(err error) error {
	if errors.Is(err, secrets.ErrRejected) {
		code, msg := codes.PermissionDenied, err.Error()
		var st interface{ GRPCStatus() *status.Status }
		if errors.As(err, &st) && st.GRPCStatus().Code() != codes.OK {
			code, msg = st.GRPCStatus().Code(), st.GRPCStatus().Message() // what citadel said
		}
		return apiError{code, "citadel refused the JWT-SVID: " + msg}
	}
	return fmt.Errorf("minting a JWT-SVID: %w", err)
}

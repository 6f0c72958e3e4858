package workloadtoken

import (
	"crypto/sha256"
	"time"

	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/expirycache"
)

// TokenVerifier is what Verifier and CachedVerifier offer.
type TokenVerifier interface {
	Verify(raw string) (Workload, error)
}

// CachedVerifier remembers tokens that verified, by their SHA-256, so that a token presented
// again (every renewal, every SDS stream of a pod) costs a hash instead of a signature check. An
// entry lives at most maxAge, so a change of the issuer's keys takes effect within it, and never
// past the token's own expiry. Refusals are not cached.
type CachedVerifier struct {
	next   TokenVerifier
	clock  clock.PassiveClock
	maxAge time.Duration
	cache  *expirycache.Cache[[sha256.Size]byte, Workload]
}

// NewCachedVerifier wraps next. A nil clock means the real one.
func NewCachedVerifier(next TokenVerifier, clk clock.PassiveClock, maxAge time.Duration, size int) *CachedVerifier {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &CachedVerifier{next: next, clock: clk, maxAge: maxAge, cache: expirycache.New[[sha256.Size]byte, Workload](size)}
}

// Verify returns a remembered result or verifies.
func (c *CachedVerifier) Verify(raw string) (Workload, error) {
	key := sha256.Sum256([]byte(raw))
	now := c.clock.Now()
	if w, ok := c.cache.Get(key, now); ok {
		return w, nil
	}
	w, err := c.next.Verify(raw)
	if err != nil {
		return w, err
	}
	expires := now.Add(c.maxAge)
	if w.Expiry.Before(expires) {
		expires = w.Expiry
	}
	c.cache.Put(key, w, expires, now)
	return w, nil
}

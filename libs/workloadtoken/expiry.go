package workloadtoken

import (
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// UnverifiedExpiry reads a token's "exp" without checking anything. It is for scheduling only
// (e.g. deciding that a held token will be stale by the next renewal), never for authorization.
func UnverifiedExpiry(raw string) (time.Time, error) {
	tok, err := jwt.ParseSigned(raw, allowedAlgorithms)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return time.Time{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if c.Expiry == nil {
		return time.Time{}, fmt.Errorf("%w: no expiry", ErrMalformed)
	}
	return c.Expiry.Time(), nil
}

package issuer

import (
	"fmt"
	"math"
	"time"
)

// MaxValiditySeconds is the largest validity_duration (in seconds) a request may carry: a longer
// one does not fit in a time.Duration. Anything up to it is accepted and clamped to the max TTL.
const MaxValiditySeconds = math.MaxInt64 / int64(time.Second)

// ValidityFromSeconds turns the validity_duration of Istio's request (seconds, 0 for the default)
// into a duration, refusing what is negative or does not fit rather than letting it overflow.
func ValidityFromSeconds(seconds int64) (time.Duration, error) {
	if seconds < 0 || seconds > MaxValiditySeconds {
		return 0, fmt.Errorf("%w: validity_duration %d is out of range: want 0 (the default TTL) to %d seconds, and anything above the max TTL is clamped to it",
			ErrInvalidTTL, seconds, MaxValiditySeconds)
	}
	return time.Duration(seconds) * time.Second, nil
}

package secrets

import (
	"math/rand/v2"
	"time"
)

// DefaultJitter spreads renewals over ±5% of a certificate's lifetime around its half-life, wider
// than Istio's ±1%, so that a fleet issued together does not renew together.
const DefaultJitter = 0.05

// renewAt is when a certificate valid from notBefore to notAfter should be renewed: at half its
// lifetime, moved by jitter×lifetime×r with r in [-1, 1].
func renewAt(notBefore, notAfter time.Time, jitter, r float64) time.Time {
	life := notAfter.Sub(notBefore)
	return notBefore.Add(time.Duration(float64(life) * (0.5 + jitter*r)))
}

// Retry delays after failed renewals: exponential from retryBase up to retryMax, ±20% jitter.
const (
	retryBase = time.Second
	retryMax  = time.Minute
)

func retryDelay(failures int) time.Duration {
	d := retryBase << min(failures-1, 10)
	d = min(d, retryMax)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// symmetric returns a uniform random number in [-1, 1].
func symmetric() float64 { return rand.Float64()*2 - 1 }

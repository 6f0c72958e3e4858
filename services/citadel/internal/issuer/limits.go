package issuer

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// nodeLimits holds a token bucket per node. Buckets that have refilled are forgotten, so memory
// follows the nodes that are signing now, not every node ever seen.
type nodeLimits struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
	swept   time.Time
}

func newNodeLimits(perSecond float64, burst int) *nodeLimits {
	if perSecond <= 0 {
		return nil
	}
	return &nodeLimits{limit: rate.Limit(perSecond), burst: max(burst, 1), buckets: map[string]*rate.Limiter{}}
}

// allow takes one token from node's bucket; a nil nodeLimits allows everything.
func (l *nodeLimits) allow(node string, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		for n, b := range l.buckets {
			if b.TokensAt(now) >= float64(l.burst) {
				delete(l.buckets, n)
			}
		}
		l.swept = now
	}
	b := l.buckets[node]
	if b == nil {
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[node] = b
	}
	return b.AllowN(now, 1)
}

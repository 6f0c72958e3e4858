// Package expirycache is a small, bounded map whose entries expire. Portcullis uses it to
// remember the results of expensive checks (token and CSR signatures) for a short while.
package expirycache

import (
	"sync"
	"time"
)

// Cache maps K to V until each entry's expiry. It holds at most max entries: when full, expired
// entries go first, then arbitrary ones. It is safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu      sync.RWMutex
	max     int
	entries map[K]entry[V]
}

type entry[V any] struct {
	v       V
	expires time.Time
}

// New returns a cache of at most size entries (at least 1).
func New[K comparable, V any](size int) *Cache[K, V] {
	return &Cache[K, V]{max: max(size, 1), entries: make(map[K]entry[V])}
}

// Get returns k's value if it has not expired at now.
func (c *Cache[K, V]) Get(k K, now time.Time) (V, bool) {
	c.mu.RLock()
	e, ok := c.entries[k]
	c.mu.RUnlock()
	if !ok || !now.Before(e.expires) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Put stores v under k until expires.
func (c *Cache[K, V]) Put(k K, v V, expires, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[k]; !ok && len(c.entries) >= c.max {
		c.evictLocked(now)
	}
	c.entries[k] = entry[V]{v: v, expires: expires}
}

// Len is the number of entries, expired or not.
func (c *Cache[K, V]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// evictLocked frees at least one slot, and up to a quarter of the cache, so that a full cache
// does not pay for a scan on every Put.
func (c *Cache[K, V]) evictLocked(now time.Time) {
	for k, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries {
		if len(c.entries) <= c.max-max(c.max/4, 1) {
			break
		}
		delete(c.entries, k)
	}
}

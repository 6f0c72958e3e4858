// Package expirycache is a small, bounded map whose entries expire. Portcullis uses it to
// remember the results of expensive checks (token and CSR signatures) for a short while.
package expirycache

import (
	"sync"
	"time"
)

// Cache maps K to V until each entry's expiry. It holds at most max entries and, if built with
// NewWithBytes, at most maxBytes of them by their sizeOf: when full, expired entries go first,
// then arbitrary ones. It is safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu       sync.RWMutex
	max      int
	maxBytes int64         // 0: no byte bound
	sizeOf   func(V) int64 // nil without a byte bound
	bytes    int64         // sum of sizeOf over entries
	entries  map[K]entry[V]
}

type entry[V any] struct {
	v       V
	expires time.Time
	size    int64
}

// New returns a cache of at most size entries (at least 1).
func New[K comparable, V any](size int) *Cache[K, V] {
	return &Cache[K, V]{max: max(size, 1), entries: make(map[K]entry[V])}
}

// NewWithBytes returns a cache of at most size entries whose sizeOf add up to at most maxBytes.
// A bound on entries alone lets a few huge values take all the memory; sizeOf should count what
// an entry keeps alive. A value larger than maxBytes is not stored.
func NewWithBytes[K comparable, V any](size int, maxBytes int64, sizeOf func(V) int64) *Cache[K, V] {
	c := New[K, V](size)
	c.maxBytes, c.sizeOf = max(maxBytes, 1), sizeOf
	return c
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
	var size int64
	if c.sizeOf != nil {
		if size = c.sizeOf(v); size > c.maxBytes {
			return
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.entries[k]; ok {
		c.bytes -= old.size
		delete(c.entries, k)
	}
	if len(c.entries) >= c.max || (c.sizeOf != nil && c.bytes+size > c.maxBytes) {
		c.evictLocked(now, size)
	}
	c.entries[k] = entry[V]{v: v, expires: expires, size: size}
	c.bytes += size
}

// Bytes is the sum of the entries' sizes (0 without a byte bound).
func (c *Cache[K, V]) Bytes() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.bytes
}

// Len is the number of entries, expired or not.
func (c *Cache[K, V]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// evictLocked makes room for an entry of size: it frees at least one slot and size bytes, and up
// to a quarter of the cache (by entries and by bytes), so that a full cache does not pay for a
// scan on every Put.
func (c *Cache[K, V]) evictLocked(now time.Time, size int64) {
	for k, e := range c.entries {
		if !now.Before(e.expires) {
			c.deleteLocked(k, e)
		}
	}
	entriesGoal := c.max - max(c.max/4, 1)
	bytesGoal := min(c.maxBytes-c.maxBytes/4, c.maxBytes-size)
	for k, e := range c.entries {
		if len(c.entries) <= entriesGoal && (c.sizeOf == nil || c.bytes <= bytesGoal) {
			break
		}
		c.deleteLocked(k, e)
	}
}

func (c *Cache[K, V]) deleteLocked(k K, e entry[V]) {
	delete(c.entries, k)
	c.bytes -= e.size
}

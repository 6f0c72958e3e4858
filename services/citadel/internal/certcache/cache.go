// Package certcache keeps the certificate chains citadel has issued, keyed by (identity, public
// key), so that a node agent that asks again for the same key gets the same certificate without a
// round trip to kms-adapter.
package certcache

import (
	"container/heap"
	"container/list"
	"crypto/sha256"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Key names one certificate: the SPIFFE ID it certifies and the SHA-256 of the certified key's
// SubjectPublicKeyInfo. Two CSRs for the same key share a key even if their other fields differ,
// because the SAN comes from the identity and never from the CSR.
type Key struct {
	Identity string
	SPKI     [sha256.Size]byte
}

// NewKey builds a Key from an identity and the DER SubjectPublicKeyInfo of a CSR.
func NewKey(identity string, spki []byte) Key {
	return Key{Identity: identity, SPKI: sha256.Sum256(spki)}
}

// Entry is a cached chain with the validity of its leaf.
type Entry struct {
	Chain     []string // PEM, leaf first, root last
	NotBefore time.Time
	NotAfter  time.Time
}

// FreshAt reports whether at least half of the leaf's lifetime is left at now: until then an agent
// that renews at half life has no reason to ask for a new certificate, so handing out the cached one
// never makes it renew early.
func (e Entry) FreshAt(now time.Time) bool {
	return e.NotAfter.Sub(now) >= e.NotAfter.Sub(e.NotBefore)/2
}

// ValidAt reports whether the leaf has not yet expired at now.
func (e Entry) ValidAt(now time.Time) bool { return now.Before(e.NotAfter) }

// Cache is a bounded map of entries. When full, an insert evicts an expired entry if there is one,
// else the oldest inserted. It is safe for concurrent use.
type Cache struct {
	size  int
	clock clock.PassiveClock

	mu      sync.RWMutex
	items   map[Key]*item
	byAge   *list.List // of *item, oldest insert at the front
	byExpry expiryHeap
}

type item struct {
	key       Key
	entry     Entry
	ageElem   *list.Element
	heapIndex int
}

// New returns an empty cache of at most size entries (size must be > 0).
func New(size int, clk clock.PassiveClock) *Cache {
	return &Cache{size: size, clock: clk, items: map[Key]*item{}, byAge: list.New()}
}

// Get returns the entry for key if there is one whose leaf has not expired.
func (c *Cache) Get(key Key) (Entry, bool) {
	c.mu.RLock()
	it, ok := c.items[key]
	c.mu.RUnlock()
	if !ok || !it.entry.ValidAt(c.clock.Now()) {
		return Entry{}, false
	}
	return it.entry, true
}

// Put stores entry under key, replacing any previous entry.
func (c *Cache) Put(key Key, entry Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.items[key]; ok {
		c.remove(old)
	}
	for len(c.items) >= c.size {
		c.evictOne()
	}
	it := &item{key: key, entry: entry}
	it.ageElem = c.byAge.PushBack(it)
	heap.Push(&c.byExpry, it)
	c.items[key] = it
}

// Drop removes every entry of identity, or every entry at all if identity is empty, and returns
// how many it removed. Rotation events use it: after a forced rotation, a revocation or a CA
// activation, the certificates held must not be handed out again.
func (c *Cache) Drop(identity string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for key, it := range c.items {
		if identity == "" || key.Identity == identity {
			c.remove(it)
			n++
		}
	}
	return n
}

// Len is the number of entries, expired ones included until they are evicted.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.items)
}

func (c *Cache) evictOne() {
	if soonest := c.byExpry[0]; !soonest.entry.ValidAt(c.clock.Now()) {
		c.remove(soonest)
		return
	}
	c.remove(c.byAge.Front().Value.(*item))
}

func (c *Cache) remove(it *item) {
	delete(c.items, it.key)
	c.byAge.Remove(it.ageElem)
	heap.Remove(&c.byExpry, it.heapIndex)
}

// expiryHeap orders items by NotAfter, soonest first.
type expiryHeap []*item

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].entry.NotAfter.Before(h[j].entry.NotAfter) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex = i
	h[j].heapIndex = j
}

func (h *expiryHeap) Push(x any) {
	it := x.(*item)
	it.heapIndex = len(*h)
	*h = append(*h, it)
}

func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

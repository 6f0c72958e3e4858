package expirycache

import (
	"testing"
	"time"
)

func TestGetHonoursExpiry(t *testing.T) {
	c := New[string, int](10)
	now := time.Unix(1000, 0)
	c.Put("a", 1, now.Add(time.Minute), now)
	if v, ok := c.Get("a", now.Add(59*time.Second)); !ok || v != 1 {
		t.Fatalf("Get before expiry = %v, %v", v, ok)
	}
	if _, ok := c.Get("a", now.Add(time.Minute)); ok {
		t.Fatal("entry served at its expiry")
	}
	if _, ok := c.Get("b", now); ok {
		t.Fatal("missing key found")
	}
}

func TestBoundedEvictsExpiredFirst(t *testing.T) {
	c := New[int, int](8)
	now := time.Unix(1000, 0)
	for i := range 4 {
		c.Put(i, i, now.Add(time.Second), now) // expire soon
	}
	for i := 4; i < 8; i++ {
		c.Put(i, i, now.Add(time.Hour), now)
	}
	later := now.Add(2 * time.Second)
	c.Put(100, 100, later.Add(time.Hour), later)
	if c.Len() > 8 {
		t.Fatalf("cache grew to %d entries, bound is 8", c.Len())
	}
	for i := 4; i < 8; i++ {
		if _, ok := c.Get(i, later); !ok {
			t.Fatalf("live entry %d evicted while expired ones were there", i)
		}
	}
	for i := range 1000 {
		c.Put(1000+i, i, later.Add(time.Hour), later)
		if c.Len() > 8 {
			t.Fatalf("cache grew to %d entries, bound is 8", c.Len())
		}
	}
	if _, ok := c.Get(1999, later); !ok {
		t.Fatal("the newest entry was not kept")
	}
}

func TestByteBoundHoldsWhateverTheEntryCount(t *testing.T) {
	const maxBytes = 1000
	c := NewWithBytes[int, []byte](1000, maxBytes, func(b []byte) int64 { return int64(len(b)) })
	now := time.Unix(1000, 0)
	for i := range 100 {
		c.Put(i, make([]byte, 90), now.Add(time.Hour), now)
		if c.Bytes() > maxBytes {
			t.Fatalf("after %d puts the cache holds %d bytes, bound is %d", i+1, c.Bytes(), maxBytes)
		}
	}
	if _, ok := c.Get(99, now); !ok {
		t.Fatal("the newest entry was not kept")
	}
	// Replacing an entry counts its new size once.
	c.Put(99, make([]byte, 10), now.Add(time.Hour), now)
	var sum int64
	for i := range 100 {
		if v, ok := c.Get(i, now); ok {
			sum += int64(len(v))
		}
	}
	if sum != c.Bytes() {
		t.Fatalf("Bytes() = %d, entries add up to %d", c.Bytes(), sum)
	}
	// A value above the whole budget is not stored, and evicts nothing.
	before := c.Len()
	c.Put(-1, make([]byte, maxBytes+1), now.Add(time.Hour), now)
	if _, ok := c.Get(-1, now); ok || c.Len() != before {
		t.Fatalf("an entry larger than the byte bound was stored (len %d -> %d)", before, c.Len())
	}
}

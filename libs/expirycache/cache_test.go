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

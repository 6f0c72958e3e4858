package certcache

import (
	"fmt"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func entry(now time.Time, ttl time.Duration) Entry {
	return Entry{Chain: []string{"leaf"}, NotBefore: now, NotAfter: now.Add(ttl)}
}

func key(i int) Key { return NewKey(fmt.Sprintf("spiffe://td/ns/a/sa/%d", i), []byte{byte(i)}) }

func TestFreshUntilHalfLife(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	e := entry(now, 10*time.Hour)
	if !e.FreshAt(now.Add(5 * time.Hour)) {
		t.Error("entry with exactly half its lifetime left is not fresh")
	}
	if e.FreshAt(now.Add(5*time.Hour + time.Second)) {
		t.Error("entry past half life is fresh")
	}
	if !e.ValidAt(now.Add(10*time.Hour-time.Second)) || e.ValidAt(now.Add(10*time.Hour)) {
		t.Error("ValidAt does not end at NotAfter")
	}
}

func TestGetSkipsExpired(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := New(10, clk)
	c.Put(key(1), entry(clk.Now(), time.Hour))
	if _, ok := c.Get(key(1)); !ok {
		t.Fatal("fresh entry not found")
	}
	clk.Step(time.Hour)
	if _, ok := c.Get(key(1)); ok {
		t.Fatal("expired entry returned")
	}
}

func TestEvictsExpiredBeforeOldest(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := New(3, clk)
	c.Put(key(1), entry(clk.Now(), 24*time.Hour)) // oldest, still valid
	c.Put(key(2), entry(clk.Now(), time.Minute))  // will expire
	c.Put(key(3), entry(clk.Now(), 24*time.Hour))
	clk.Step(2 * time.Minute)
	c.Put(key(4), entry(clk.Now(), 24*time.Hour))
	if c.Len() != 3 {
		t.Fatalf("Len = %d, want 3", c.Len())
	}
	for _, i := range []int{1, 3, 4} {
		if _, ok := c.Get(key(i)); !ok {
			t.Errorf("entry %d evicted; only the expired entry should have gone", i)
		}
	}
}

func TestEvictsOldestWhenNoneExpired(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := New(2, clk)
	c.Put(key(1), entry(clk.Now(), 48*time.Hour)) // oldest, yet expires last
	c.Put(key(2), entry(clk.Now(), 24*time.Hour))
	c.Put(key(3), entry(clk.Now(), 24*time.Hour))
	if _, ok := c.Get(key(1)); ok {
		t.Error("oldest entry kept")
	}
	for _, i := range []int{2, 3} {
		if _, ok := c.Get(key(i)); !ok {
			t.Errorf("entry %d evicted", i)
		}
	}
}

func TestPutReplaces(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := New(2, clk)
	c.Put(key(1), entry(clk.Now(), time.Hour))
	c.Put(key(1), Entry{Chain: []string{"new"}, NotBefore: clk.Now(), NotAfter: clk.Now().Add(time.Hour)})
	c.Put(key(2), entry(clk.Now(), time.Hour))
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want 2", c.Len())
	}
	if e, _ := c.Get(key(1)); e.Chain[0] != "new" {
		t.Errorf("entry not replaced: %v", e.Chain)
	}
}

func TestDropByIdentityAndAll(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(10, clk)
	e := Entry{NotBefore: clk.Now(), NotAfter: clk.Now().Add(time.Hour)}
	a1, a2, b := NewKey("spiffe://td/a", []byte{1}), NewKey("spiffe://td/a", []byte{2}), NewKey("spiffe://td/b", []byte{1})
	for _, k := range []Key{a1, a2, b} {
		c.Put(k, e)
	}
	if n := c.Drop("spiffe://td/a"); n != 2 {
		t.Fatalf("Drop(a) = %d, want 2", n)
	}
	if _, ok := c.Get(a1); ok {
		t.Error("a dropped entry is still served")
	}
	if _, ok := c.Get(b); !ok {
		t.Error("another identity's entry was dropped")
	}
	if n := c.Drop(""); n != 1 || c.Len() != 0 {
		t.Errorf("Drop(all) = %d leaving %d, want 1 leaving 0", n, c.Len())
	}
	c.Put(a1, e) // the heap and age list stay consistent after drops
	if _, ok := c.Get(a1); !ok {
		t.Error("put after drop lost")
	}
}

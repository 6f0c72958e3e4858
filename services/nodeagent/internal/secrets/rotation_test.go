package secrets

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

type rotationRecorder struct {
	mu      sync.Mutex
	applied map[string]int
	version uint64
}

func (r *rotationRecorder) BundleVersion(v uint64) { r.mu.Lock(); r.version = v; r.mu.Unlock() }
func (r *rotationRecorder) EventApplied(kind string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.applied == nil {
		r.applied = map[string]int{}
	}
	r.applied[kind]++
}
func (r *rotationRecorder) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied[kind]
}

func issueBoth(t *testing.T, m *Manager) (cart, web *Certificate) {
	t.Helper()
	var err error
	if cart, err = m.Certificate(context.Background(), cartID, Credential{Token: "t"}); err != nil {
		t.Fatal(err)
	}
	if web, err = m.Certificate(context.Background(), webID, Credential{Token: "t"}); err != nil {
		t.Fatal(err)
	}
	return cart, web
}

func current(t *testing.T, m *Manager, id spiffeid.ID) *Certificate {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil || e.cert == nil {
		t.Fatalf("no certificate for %s", id)
	}
	return e.cert
}

func TestRotateReissuesOnlyThatIdentityWithinTheJitterWindow(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	m := newTestManager(ca, clk, &recorder{})
	rec := &rotationRecorder{}
	m.cfg.Rotations = rec
	cartSub, webSub := m.Subscribe(cartID), m.Subscribe(webID)
	defer m.Unsubscribe(cartSub)
	defer m.Unsubscribe(webSub)
	cart, web := issueBoth(t, m)
	drain(cartSub)
	drain(webSub)

	if !m.Rotate(cartID, "identity_rotation", 10*time.Second) {
		t.Fatal("Rotate reported the held identity as not held")
	}
	if d := clk.scheduled(); d[len(d)-1] < 0 || d[len(d)-1] >= 10*time.Second {
		t.Fatalf("re-issue scheduled in %s, want within [0, 10s)", d[len(d)-1])
	}
	clk.Step(10 * time.Second)
	requireNotified(t, cartSub, "forced rotation")
	eventually(t, "the event to be applied", func() bool { return rec.count("identity_rotation") == 1 })
	if got := current(t, m, cartID); serial(got) == serial(cart) {
		t.Fatal("forced rotation kept the old certificate")
	}
	requireNotNotified(t, webSub, "another identity's stream")
	if serial(current(t, m, webID)) != serial(web) {
		t.Fatal("another identity was re-issued")
	}
	if m.Rotate(spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/unknown"), "identity_rotation", 0) {
		t.Fatal("Rotate of an identity the agent does not hold reported true")
	}
}

func TestRotateAllSpreadsEveryIdentityOverTheWindow(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	m := newTestManager(ca, clk, &recorder{})
	defer m.Unsubscribe(m.Subscribe(cartID))
	defer m.Unsubscribe(m.Subscribe(webID))
	cart, web := issueBoth(t, m)
	ca.rotate(t) // the CA activated a new root; the agent already has the bundle with both

	if n := m.RotateAll("ca_rotation", time.Minute); n != 2 {
		t.Fatalf("RotateAll scheduled %d, want 2", n)
	}
	d := clk.scheduled()
	for _, after := range d[len(d)-2:] {
		if after < 0 || after >= time.Minute {
			t.Fatalf("re-issue scheduled in %s, want within [0, 1m)", after)
		}
	}
	clk.Step(time.Minute)
	eventually(t, "both re-issued under the new root", func() bool {
		c, w := current(t, m, cartID), current(t, m, webID)
		return serial(c) != serial(cart) && serial(w) != serial(web) &&
			c.Chain[len(c.Chain)-1].Equal(ca.root) && w.Chain[len(w.Chain)-1].Equal(ca.root)
	})
}

func TestRetiredRootReplacesCertificatesAtOnce(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	m := newTestManager(ca, clk, &recorder{})
	sub := m.Subscribe(cartID)
	defer m.Unsubscribe(sub)
	old, err := m.Certificate(context.Background(), cartID, Credential{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	ca.rotate(t)
	ca.retire() // the old root leaves the bundle: the held leaf no longer verifies
	if err := m.RefreshBundle(context.Background(), "trust_bundle_changed", 3, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	clk.Step(0)
	eventually(t, "a certificate under the remaining root", func() bool {
		c := current(t, m, cartID)
		return serial(c) != serial(old) && c.Chain[len(c.Chain)-1].Equal(ca.root)
	})
}

func TestRefreshBundleWaitsForTheAnnouncedVersionButNotForever(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	m := newTestManager(ca, clk, &recorder{})
	rec := &rotationRecorder{}
	m.cfg.Rotations = rec
	done := make(chan error, 1)
	go func() { done <- m.RefreshBundle(context.Background(), "trust_bundle_changed", 2, time.Second) }()
	eventually(t, "the first fetch", func() bool { return ca.bundles() == 1 })
	ca.rotate(t) // citadel catches up with version 2
	eventually(t, "a retry timer", func() bool { return clk.HasWaiters() })
	clk.Step(time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m.BundleVersion() != 2 || rec.count("trust_bundle_changed") != 1 {
		t.Fatalf("version %d, applied %d; want 2 and 1", m.BundleVersion(), rec.count("trust_bundle_changed"))
	}
	// A forged event announcing a version that never comes costs a bounded number of fetches.
	before := ca.bundles()
	go func() { done <- m.RefreshBundle(context.Background(), "trust_bundle_changed", 99, time.Second) }()
	for range 7 {
		eventually(t, "a retry timer", func() bool { return clk.HasWaiters() })
		clk.Step(time.Minute)
	}
	<-done
	if n := ca.bundles() - before; n != 8 {
		t.Fatalf("a forged version cost %d fetches, want 8", n)
	}
	if m.BundleVersion() != 2 {
		t.Fatalf("version %d after a forged event, want 2", m.BundleVersion())
	}
}

func TestRenewIfSerialRenewsOnlyTheAnnouncedCertificate(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	m := newTestManager(ca, clk, &recorder{})
	defer m.Unsubscribe(m.Subscribe(cartID))
	cart, _ := m.Certificate(context.Background(), cartID, Credential{Token: "t"})
	if m.RenewIfSerial(cartID, "abc") {
		t.Fatal("renewed for a serial that is not the current one")
	}
	if !m.RenewIfSerial(cartID, serial(cart)) {
		t.Fatal("did not renew the announced certificate")
	}
	clk.Step(0)
	eventually(t, "renewal", func() bool { return serial(current(t, m, cartID)) != serial(cart) })
}

package secrets

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/events"
)

// RotationObserver is told how rotation events are applied; metrics implement it.
type RotationObserver interface {
	BundleVersion(v uint64)
	// EventApplied reports the time from an event's arrival until what it asked for was ready to
	// push (a new bundle, a re-issued certificate).
	EventApplied(kind string, took time.Duration)
}

// cause remembers the event that asked for an update, to time it.
type cause struct {
	kind string
	at   time.Time
}

func (m *Manager) applied(c *cause) {
	if m.cfg.Rotations != nil {
		m.cfg.Rotations.EventApplied(c.kind, m.cfg.Clock.Since(c.at))
	}
}

// BundleVersion is the version of the held trust bundle (0 if none or unversioned).
func (m *Manager) BundleVersion() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bundleVersion
}

// RefreshBundle fetches the bundle now because an event says it changed to version want. Citadel
// may not have caught up yet, so a bundle older than want is fetched again a few times; want is
// not trusted beyond that (a forged event costs a few fetches). It returns once the bundle is at
// least want or the attempts are spent.
func (m *Manager) RefreshBundle(ctx context.Context, kind string, want uint64, retryDelay time.Duration) error {
	c := &cause{kind: kind, at: m.cfg.Clock.Now()}
	err := events.UntilVersion(ctx, m.cfg.Clock, want, retryDelay, func(ctx context.Context) (uint64, error) {
		_, err := m.refreshBundle(ctx)
		return m.BundleVersion(), err
	})
	if err == nil {
		m.applied(c)
	}
	return err
}

// Rotate re-issues id's certificate at a random moment within the next `within` (at once if
// within is 0), because an event asked for it: a forced rotation, a revocation, an expiry notice.
// It reports whether the agent holds id at all.
func (m *Manager) Rotate(id spiffeid.ID, kind string, within time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil || m.closed {
		return false
	}
	m.rotateLocked(id, e, &cause{kind: kind, at: m.cfg.Clock.Now()}, within)
	return true
}

// RotateAll re-issues every held certificate, each at its own random moment within `within`, so
// that a fleet moving to a new CA does not reach citadel at once. It returns how many it scheduled.
func (m *Manager) RotateAll(kind string, within time.Duration) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0
	}
	c := &cause{kind: kind, at: m.cfg.Clock.Now()}
	for id, e := range m.entries {
		m.rotateLocked(id, e, c, within)
	}
	return len(m.entries)
}

// RenewIfSerial renews id now if its current certificate has the given serial (hex): kms-adapter
// says that certificate is close to expiry, so its renewal was lost.
func (m *Manager) RenewIfSerial(id spiffeid.ID, serial string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil || e.cert == nil || m.closed || e.cert.Leaf().SerialNumber.Text(16) != serial {
		return false
	}
	m.rotateLocked(id, e, &cause{kind: "certificate_expiring", at: m.cfg.Clock.Now()}, 0)
	return true
}

// rotateLocked schedules a re-issue of e after a random delay in [0, within). Unlike renewal it
// has no minimum delay: a revoked certificate is replaced at once. m.mu must be held.
func (m *Manager) rotateLocked(id spiffeid.ID, e *entry, c *cause, within time.Duration) {
	var after time.Duration
	if within > 0 {
		after = rand.N(within)
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	e.cause = c
	e.timer = m.cfg.Clock.AfterFunc(after, func() { go m.renew(id) })
}

// replaceUntrustedLocked re-issues at once every certificate that no longer chains to the held
// bundle (its root was retired): it would fail every handshake. m.mu must be held.
func (m *Manager) replaceUntrustedLocked() {
	now := m.cfg.Clock.Now()
	for id, e := range m.entries {
		if e.cert != nil && chainsTo(e.cert.Chain, m.roots, now) != nil {
			m.cfg.Logger.Warn("certificate no longer chains to the trust bundle; re-issuing", "spiffe_id", id.String())
			m.rotateLocked(id, e, &cause{kind: "root_retired", at: now}, 0)
		}
	}
}

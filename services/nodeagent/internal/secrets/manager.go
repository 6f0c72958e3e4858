// Package secrets makes, caches and renews the agent's workload certificates and trust bundle.
// Private keys are made here, on the node, and never leave it. Every certificate is checked
// against its key and the trust bundle before anyone can see it, and subscribers are told when
// what they watch changes.
package secrets

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// ErrRejected marks a certificate request that citadel refused for good (bad token, wrong node,
// bad CSR); retrying the same request cannot help.
var ErrRejected = errors.New("certificate request rejected")

// Signer asks the CA to sign. csrPEM is a PEM CSR. It returns the chain leaf first, root last.
// Errors that retrying cannot fix wrap ErrRejected.
type Signer interface {
	Sign(ctx context.Context, csrPEM []byte, cred Credential, ttl time.Duration) ([]*x509.Certificate, error)
}

// Credential authenticates a signing request: the agent's statement of a pod it attested itself
// (libs/attestedpod), the workload's token or, for a renewal once that token has gone stale, the
// identity's current certificate, whose key then signs the new CSR (see libs/renewalproof).
type Credential struct {
	Pod     *attestedpod.Ref
	Token   string
	Current *Certificate
}

// tokenMargin is how long a token must still be valid to be sent; a staler one would expire on
// the way to citadel.
const tokenMargin = time.Minute

// credentialLocked picks how to authenticate the next request for e. m.mu must be held.
func (m *Manager) credentialLocked(e *entry) Credential {
	if e.pod != nil {
		return Credential{Pod: e.pod} // it does not expire: citadel checks the pod is still here
	}
	now := m.cfg.Clock.Now()
	if e.cert == nil || !now.Before(e.cert.Leaf().NotAfter) {
		return Credential{Token: e.token}
	}
	// A certificate restored from the node's state (see Restore) came without a token: it proves
	// itself.
	if e.token == "" {
		return Credential{Current: e.cert}
	}
	// Envoy sends its token once per stream, and streams outlive tokens: renew with the current
	// certificate once the token is stale. An unreadable token is sent as is, to be refused with
	// citadel's own explanation.
	if exp, err := workloadtoken.UnverifiedExpiry(e.token); err == nil && exp.Before(now.Add(tokenMargin)) {
		return Credential{Current: e.cert}
	}
	return Credential{Token: e.token}
}

// BundleSource returns the current trust bundle: its roots and its version (0: unversioned).
type BundleSource interface {
	TrustBundle(ctx context.Context) ([]*x509.Certificate, uint64, error)
}

// Observer is told about the manager's work; metrics implement it. It is required.
type Observer interface {
	Issued(id spiffeid.ID, leaf *x509.Certificate, took time.Duration)
	IssueFailed(id spiffeid.ID, err error)
	Dropped(id spiffeid.ID)
	BundleChanged(roots []*x509.Certificate)
}

// Config configures a Manager.
type Config struct {
	Signer  Signer
	Bundles BundleSource
	Clock   clock.WithDelayedExecution
	Logger  *slog.Logger
	Observe Observer
	// Rotations, if set, is told how rotation events are applied.
	Rotations RotationObserver
	TTL       time.Duration // requested certificate lifetime
	KeyType   KeyType
	Jitter    float64       // renewal jitter as a fraction of lifetime; 0 means DefaultJitter (config refuses 0)
	Refresh   time.Duration // trust bundle poll interval
	// IssueTimeout bounds one signing attempt, independent of any one caller's context.
	IssueTimeout time.Duration
	// Store, if set, keeps every certificate on the node, for Restore after a restart.
	Store Store
	// RestoreGrace is how long a restored identity is renewed while no stream watches it; 0 means
	// DefaultRestoreGrace.
	RestoreGrace time.Duration
}

// Manager is safe for concurrent use.
type Manager struct {
	cfg    Config
	flight singleflight.Group

	mu            sync.Mutex
	entries       map[spiffeid.ID]*entry
	roots         []*x509.Certificate
	bundleVersion uint64
	subs          map[*Subscription]struct{}
	closed        bool
	persisting    idLocks // serializes the Store writes of each identity
}

type entry struct {
	// pod or token is the newest caller's credential, kept for renewals.
	pod      *attestedpod.Ref
	token    string
	cert     *Certificate
	timer    clock.Timer
	failures int
	// cause is the rotation event that asked for the re-issue under way (nil: none).
	cause *cause
	held  holding // kept with the certificate in Config.Store
}

// Subscription is told (on C, coalesced) when its identity's certificate or the bundle changes.
// With a callback (SubscribeFunc), C holds the pending notification and the callback runs on a
// goroutine of its own, once per pending notification: the callback drains C before it looks at
// what changed, so a change made while it runs starts another run.
type Subscription struct {
	ID spiffeid.ID
	C  chan struct{}

	onChange func()
}

// New builds a Manager; call Run to keep the bundle fresh.
func New(cfg Config) *Manager {
	if cfg.Jitter == 0 {
		cfg.Jitter = DefaultJitter
	}
	if cfg.IssueTimeout == 0 {
		cfg.IssueTimeout = 30 * time.Second
	}
	return &Manager{cfg: cfg, entries: map[spiffeid.ID]*entry{}, subs: map[*Subscription]struct{}{}}
}

// Subscribe registers interest in id. Unsubscribe when done: identities nobody watches are
// not renewed.
func (m *Manager) Subscribe(id spiffeid.ID) *Subscription {
	s := &Subscription{ID: id, C: make(chan struct{}, 1)}
	m.mu.Lock()
	m.subs[s] = struct{}{}
	m.mu.Unlock()
	return s
}

// SubscribeFunc is Subscribe with a callback instead of a goroutine waiting on C: an SDS stream
// then needs no goroutine of its own to hear about changes.
func (m *Manager) SubscribeFunc(id spiffeid.ID, onChange func()) *Subscription {
	s := &Subscription{ID: id, C: make(chan struct{}, 1), onChange: onChange}
	m.mu.Lock()
	m.subs[s] = struct{}{}
	m.mu.Unlock()
	return s
}

// Unsubscribe removes s.
func (m *Manager) Unsubscribe(s *Subscription) {
	m.mu.Lock()
	delete(m.subs, s)
	m.mu.Unlock()
}

// notifyLocked wakes the subscribers of id (all of them if id is zero). m.mu must be held.
func (m *Manager) notifyLocked(id spiffeid.ID) {
	for s := range m.subs {
		if id.IsZero() || s.ID == id {
			select {
			case s.C <- struct{}{}:
				if s.onChange != nil {
					go s.onChange()
				}
			default: // a notification is already pending
			}
		}
	}
}

func (m *Manager) watchedLocked(id spiffeid.ID) bool {
	for s := range m.subs {
		if s.ID == id {
			return true
		}
	}
	return false
}

// Certificate returns id's current certificate, issuing one if there is none or it expired.
// cred is the caller's: the pod the agent attested, or its verified workload token; the newest
// is kept for renewals.
func (m *Manager) Certificate(ctx context.Context, id spiffeid.ID, cred Credential) (*Certificate, error) {
	m.mu.Lock()
	e := m.entries[id]
	if e == nil {
		e = &entry{}
		m.entries[id] = e
	}
	e.pod, e.token = cred.Pod, cred.Token
	if c := m.freshLocked(id); c != nil {
		m.mu.Unlock()
		return c, nil
	}
	m.mu.Unlock()

	ch := m.flight.DoChan(id.String(), func() (any, error) {
		// A flight that ended between the check above and this one may have stored a certificate.
		m.mu.Lock()
		c := m.freshLocked(id)
		m.mu.Unlock()
		if c != nil {
			return c, nil
		}
		return m.issue(id)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Certificate), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// freshLocked returns id's cached certificate if it is still valid. m.mu must be held.
func (m *Manager) freshLocked(id spiffeid.ID) *Certificate {
	if e := m.entries[id]; e != nil && e.cert != nil && m.cfg.Clock.Now().Before(e.cert.Leaf().NotAfter) {
		return e.cert
	}
	return nil
}

// issue makes a key and CSR, has citadel sign it, checks the result, stores it and schedules
// its renewal. Concurrent calls for one identity are coalesced by the caller.
func (m *Manager) issue(id spiffeid.ID) (*Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.IssueTimeout)
	defer cancel()
	start := m.cfg.Clock.Now()
	m.mu.Lock()
	var cred Credential
	if e := m.entries[id]; e != nil {
		cred = m.credentialLocked(e)
	}
	m.mu.Unlock()

	cert, err := m.signNew(ctx, id, cred)
	if err != nil {
		m.cfg.Observe.IssueFailed(id, err)
		return nil, fmt.Errorf("issuing certificate for %s: %w", id, err)
	}
	m.cfg.Observe.Issued(id, cert.Leaf(), m.cfg.Clock.Since(start))

	defer m.persist(id) // runs after the unlock below: no I/O under m.mu
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil || m.closed {
		return cert, nil
	}
	e.cert, e.failures = cert, 0
	if e.cause != nil {
		m.applied(e.cause)
		e.cause = nil
	}
	m.scheduleLocked(id, e, renewAt(cert.Leaf().NotBefore, cert.Leaf().NotAfter, m.cfg.Jitter, symmetric()).Sub(m.cfg.Clock.Now()))
	m.notifyLocked(id)
	m.cfg.Logger.Info("certificate issued", "spiffe_id", id.String(), "serial", cert.Leaf().SerialNumber.Text(16),
		"not_after", cert.Leaf().NotAfter)
	return cert, nil
}

func (m *Manager) signNew(ctx context.Context, id spiffeid.ID, cred Credential) (*Certificate, error) {
	key, err := m.cfg.KeyType.generate()
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	csr, err := newCSR(key, id)
	if err != nil {
		return nil, err
	}
	chain, err := m.cfg.Signer.Sign(ctx, csr, cred, m.cfg.TTL)
	if err != nil {
		return nil, err
	}
	roots, err := m.Roots(ctx)
	if err != nil {
		return nil, err
	}
	cert, err := newCertificate(id, key, chain, roots, m.cfg.Clock.Now())
	if err != nil && len(chain) > 0 && !slices.ContainsFunc(roots, chain[len(chain)-1].Equal) {
		// Signed under a root we do not know yet (a rotation): refresh the bundle once.
		if roots, err = m.refreshBundle(ctx); err == nil {
			cert, err = newCertificate(id, key, chain, roots, m.cfg.Clock.Now())
		}
	}
	return cert, err
}

// minRenewDelay keeps a certificate that is already due (e.g. a very short lifetime) from being
// renewed in a tight loop.
const minRenewDelay = time.Second

func (m *Manager) scheduleLocked(id spiffeid.ID, e *entry, after time.Duration) {
	if e.timer != nil {
		e.timer.Stop()
	}
	// renew blocks until citadel answers; a timer callback must not (a clock may run callbacks on
	// its own goroutine or, like k8s.io/utils' FakeClock, while holding its lock).
	e.timer = m.cfg.Clock.AfterFunc(max(after, minRenewDelay), func() { go m.renew(id) })
}

// renew runs when a certificate reaches its renewal point or a retry is due.
func (m *Manager) renew(id spiffeid.ID) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	if !m.watchedLocked(id) && !m.restoringLocked(id) {
		delete(m.entries, id)
		m.mu.Unlock()
		m.cfg.Observe.Dropped(id)
		m.persist(id)
		return
	}
	var due *Certificate
	if e := m.entries[id]; e != nil {
		due = e.cert
	}
	m.mu.Unlock()
	issue := func() (any, error) { return m.issue(id) }
	r := <-m.flight.DoChan(id.String(), issue)
	if r.Err == nil && r.Shared && r.Val.(*Certificate) == due {
		// The timer fired before the flight that made the due certificate had returned, and
		// joined it: that renewed nothing, and no timer is left. That flight is over now.
		r = <-m.flight.DoChan(id.String(), issue)
	}
	if r.Err == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil || m.closed {
		return
	}
	e.failures++
	delay := retryDelay(e.failures)
	m.cfg.Logger.Warn("certificate renewal failed; serving the current one meanwhile",
		"spiffe_id", id.String(), "err", r.Err, "failures", e.failures, "retry_in", delay)
	m.scheduleLocked(id, e, delay)
}

// Roots returns the trust bundle, fetching it if the agent has none yet.
func (m *Manager) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	m.mu.Lock()
	roots := m.roots
	m.mu.Unlock()
	if roots != nil {
		return roots, nil
	}
	return m.refreshBundle(ctx)
}

func (m *Manager) refreshBundle(ctx context.Context) ([]*x509.Certificate, error) {
	v, err, _ := m.flight.Do("\x00bundle", func() (any, error) {
		roots, version, err := m.cfg.Bundles.TrustBundle(ctx)
		if err != nil {
			return nil, fmt.Errorf("fetching trust bundle: %w", err)
		}
		if len(roots) == 0 {
			return nil, errors.New("fetching trust bundle: citadel returned no roots")
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if version != 0 && version < m.bundleVersion {
			return m.roots, nil // an older answer (citadel replicas catching up): keep the newer
		}
		m.bundleVersion = version
		if m.cfg.Rotations != nil {
			m.cfg.Rotations.BundleVersion(version)
		}
		if !slices.EqualFunc(roots, m.roots, (*x509.Certificate).Equal) {
			m.roots = roots
			m.cfg.Observe.BundleChanged(roots)
			m.notifyLocked(spiffeid.ID{})
			m.replaceUntrustedLocked()
		}
		return m.roots, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]*x509.Certificate), nil
}

// Run polls the trust bundle every Refresh until ctx ends, then stops all renewals.
func (m *Manager) Run(ctx context.Context) error {
	defer m.close()
	for {
		if _, err := m.refreshBundle(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Logger.Warn("trust bundle refresh failed; serving the current one", "err", err)
		}
		t := m.cfg.Clock.NewTimer(m.cfg.Refresh)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

func (m *Manager) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for _, e := range m.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
}

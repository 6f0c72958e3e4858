package secrets

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secretstore"
)

// Store keeps the agent's certificates and keys on the node across restarts;
// *secretstore.Store implements it. It must be safe for concurrent use. The Manager serializes
// the writes of each identity and writes what it holds at the time of the write, so the last
// write of an identity is its current state.
type Store interface {
	Save(secretstore.Record) error
	// Delete removes id's record; a missing record is not an error.
	Delete(id spiffeid.ID) error
	// Load returns every readable record, and an error for each file it could not read: removed,
	// or left alone if it wraps secretstore.ErrUnknownFile.
	Load() ([]secretstore.Record, []error)
}

// DefaultRestoreGrace is how long a restored identity is kept and renewed although no stream
// watches it: sidecars reconnect within seconds of the agent's return (Envoy retries its SDS
// stream with a backoff capped well under a minute), but a node under load can take longer.
const DefaultRestoreGrace = 5 * time.Minute

// Bounds on what is kept per identity, so that a deployment rolled many times over one agent's
// life does not grow its record without end: the oldest pods go first (Restore drops the ones no
// longer on the node anyway). An agent serves a handful of names per identity.
const (
	maxHeldPods  = 64
	maxHeldNames = 64
)

// holding is what an entry keeps besides its certificate, for a restarted agent.
type holding struct {
	pods  []secretstore.Pod // oldest first
	names []string
	// restoredUntil: the entry was restored from the store, and is renewed even when nobody
	// watches it until then.
	restoredUntil time.Time
}

// addPod records pod (newest last) and reports whether it was new.
func (h *holding) addPod(pod secretstore.Pod) bool {
	i := slices.IndexFunc(h.pods, func(p secretstore.Pod) bool { return p.UID == pod.UID })
	if i >= 0 && h.pods[i] == pod {
		return false
	}
	if i >= 0 {
		h.pods = slices.Delete(h.pods, i, i+1)
	}
	h.pods = append(h.pods, pod)
	if len(h.pods) > maxHeldPods {
		h.pods = slices.Delete(h.pods, 0, len(h.pods)-maxHeldPods)
	}
	return true
}

// addNames records names and reports whether any was new.
func (h *holding) addNames(names []string) bool {
	changed := false
	for _, n := range names {
		if !slices.Contains(h.names, n) && len(h.names) < maxHeldNames {
			h.names = append(h.names, n)
			changed = true
		}
	}
	return changed
}

// Hold records that pod, on this node, holds id, and that its stream asked for names. Both are
// kept with id's certificate: a restarted agent keeps the certificate only for pods still on
// the node (see Restore), and knows what to push to a sidecar that reconnects without asking
// again (see Names, HeldBy). Call it when a stream asks for names; a Hold that adds nothing
// writes nothing. Without a Hold an identity has no pod, and Restore drops it.
func (m *Manager) Hold(id spiffeid.ID, pod secretstore.Pod, names []string) {
	m.updateHolding(id, func(h *holding) bool {
		newPod := h.addPod(pod)
		return h.addNames(names) || newPod
	})
}

// Remember adds names to what id's streams asked for, kept with its certificate (see Hold, which
// also records the pod). With Names it implements sds.Remembered, so that the names outlive a
// restart.
func (m *Manager) Remember(id spiffeid.ID, names []string) {
	m.updateHolding(id, func(h *holding) bool { return h.addNames(names) })
}

// Names returns the SDS resource names id's streams asked for, restored ones included; nil if
// none.
func (m *Manager) Names(id spiffeid.ID) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[id]; e != nil {
		return slices.Clone(e.held.names)
	}
	return nil
}

func (m *Manager) updateHolding(id spiffeid.ID, update func(*holding) bool) {
	m.mu.Lock()
	e := m.entries[id]
	if e == nil {
		e = &entry{}
		m.entries[id] = e
	}
	write := update(&e.held) && e.cert != nil && !m.closed
	m.mu.Unlock()
	if write {
		m.persist(id)
	}
}

// Held is an identity that a pod holds and the SDS resource names asked for it.
type Held struct {
	ID            spiffeid.ID
	ResourceNames []string
}

// HeldBy returns the identities the pod with podUID holds, restored or not. It walks every
// identity: it is for a stream that reconnected without asking, not for every request.
func (m *Manager) HeldBy(podUID string) []Held {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Held
	for id, e := range m.entries {
		if e.cert != nil && slices.ContainsFunc(e.held.pods, func(p secretstore.Pod) bool { return p.UID == podUID }) {
			out = append(out, Held{ID: id, ResourceNames: slices.Clone(e.held.names)})
		}
	}
	return out
}

// RestoreResult counts what Restore did.
type RestoreResult struct {
	Restored int // served from the store
	Dropped  int // deleted from the store: unreadable, expired, not matching, untrusted, or no pod left
}

// Restore loads what Config.Store kept, before the agent serves. A certificate that is valid now,
// matches its key, names its identity, chains to the current trust bundle, and is held by at
// least one pod keepPod says is still on this node is served at once, with no CSR and no token,
// and renewed on its schedule with a renewal proof made by its own key (no token needed). Pods
// keepPod refuses are forgotten; everything else is deleted from the store.
//
// A restored identity is renewed, not dropped, while nobody watches it for Config.RestoreGrace,
// so that its sidecars have time to reconnect. keepPod is called without locks held, so call
// Restore once the pod view is complete (mcp-sync's first snapshot): a pod it does not know yet
// is a pod gone. Restore fails only if the trust bundle cannot be fetched; the store then keeps
// every readable record (Load has removed the unreadable ones).
func (m *Manager) Restore(ctx context.Context, keepPod func(secretstore.Pod) bool) (RestoreResult, error) {
	var res RestoreResult
	if m.cfg.Store == nil {
		return res, nil
	}
	recs, errs := m.cfg.Store.Load()
	for _, err := range errs {
		if errors.Is(err, secretstore.ErrUnknownFile) {
			m.cfg.Logger.Warn("state directory holds a file the agent did not write", "err", err)
			continue
		}
		m.cfg.Logger.Warn("unreadable state file dropped", "err", err)
		res.Dropped++
	}
	roots, err := m.Roots(ctx)
	if err != nil {
		return res, fmt.Errorf("restoring certificates: %w", err)
	}
	grace := m.cfg.RestoreGrace
	if grace == 0 {
		grace = DefaultRestoreGrace
	}
	now := m.cfg.Clock.Now()
	certs, certErrs := restoredCertificates(recs, roots, now)
	for i, rec := range recs {
		cert, err := certs[i], certErrs[i]
		pods := slices.DeleteFunc(slices.Clone(rec.Pods), func(p secretstore.Pod) bool { return !keepPod(p) })
		if err == nil && len(pods) == 0 {
			err = errors.New("no pod that held it is on this node any more")
		}
		if err != nil {
			res.Dropped++
			m.cfg.Logger.Info("kept certificate dropped", "spiffe_id", rec.ID.String(), "reason", err)
			if err := m.cfg.Store.Delete(rec.ID); err != nil {
				m.cfg.Logger.Warn("deleting a dropped certificate from the node's state failed", "spiffe_id", rec.ID.String(), "err", err)
			}
			continue
		}
		if !m.restoreEntry(rec.ID, cert, holding{pods: pods, names: rec.ResourceNames, restoredUntil: now.Add(grace)}) {
			continue
		}
		res.Restored++
		if len(pods) < len(rec.Pods) {
			m.persist(rec.ID) // forget the pods that left
		}
	}
	m.cfg.Logger.Info("certificates restored from the node's state", "restored", res.Restored, "dropped", res.Dropped)
	return res, nil
}

// restoreEntry installs a restored certificate and schedules its renewal, unless the manager
// already holds one for id (a caller was quicker) or is closed.
func (m *Manager) restoreEntry(id spiffeid.ID, cert *Certificate, held holding) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if m.closed || (e != nil && e.cert != nil) {
		return false
	}
	if e == nil {
		e = &entry{}
		m.entries[id] = e
	}
	for _, p := range held.pods { // merge with Holds made meanwhile
		e.held.addPod(p)
	}
	e.held.addNames(held.names)
	e.cert, e.held.restoredUntil = cert, held.restoredUntil
	leaf, now := cert.Leaf(), m.cfg.Clock.Now()
	after := renewAt(leaf.NotBefore, leaf.NotAfter, m.cfg.Jitter, symmetric()).Sub(now)
	if after <= 0 {
		// The agent was down past the renewal point: spread these renewals over a quarter of
		// what is left of the lifetime rather than send them all to citadel at once.
		after = rand.N(max(leaf.NotAfter.Sub(now)/4, minRenewDelay))
	}
	m.scheduleLocked(id, e, after)
	m.notifyLocked(id)
	return true
}

// restoredCertificates rebuilds and checks recs on every CPU: the checks are three ECDSA
// verifications per identity (leaf, intermediate, self-signed root), and the agent serves nobody
// until they are done.
func restoredCertificates(recs []secretstore.Record, roots []*x509.Certificate, now time.Time) ([]*Certificate, []error) {
	certs, errs := make([]*Certificate, len(recs)), make([]error, len(recs))
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(runtime.GOMAXPROCS(0), len(recs)) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < len(recs); i = int(next.Add(1)) - 1 {
				certs[i], errs[i] = restoredCertificate(recs[i], roots, now)
			}
		})
	}
	wg.Wait()
	return certs, errs
}

// restoredCertificate rebuilds a kept certificate and checks it as if citadel had just sent it.
func restoredCertificate(rec secretstore.Record, roots []*x509.Certificate, now time.Time) (*Certificate, error) {
	chain := make([]*x509.Certificate, 0, len(rec.Chain))
	for i, der := range rec.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d: %w", i, err)
		}
		chain = append(chain, c)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(rec.Key)
	if err != nil {
		return nil, fmt.Errorf("parsing the private key: %w", err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", parsed)
	}
	return newCertificate(rec.ID, key, chain, roots, now)
}

// restoringLocked reports whether id was restored from the store so recently that its sidecars
// may not have reconnected yet. m.mu must be held.
func (m *Manager) restoringLocked(id spiffeid.ID) bool {
	e := m.entries[id]
	return e != nil && m.cfg.Clock.Now().Before(e.held.restoredUntil)
}

// persist writes id's current state to the store: its certificate if it has one, nothing if it
// is waiting for its first, a deletion if it is gone. Writes of one identity are serialized and
// each reads the state when its turn comes, so the last write is the current state.
func (m *Manager) persist(id spiffeid.ID) {
	if m.cfg.Store == nil {
		return
	}
	unlock := m.persisting.lock(id)
	defer unlock()
	m.mu.Lock()
	e, closed := m.entries[id], m.closed
	var rec *secretstore.Record
	if e != nil && e.cert != nil {
		rec = recordLocked(id, e)
	}
	m.mu.Unlock()
	var err error
	switch {
	case closed: // stopping: leave the state as it is for the next start
	case rec != nil:
		err = m.cfg.Store.Save(*rec)
	case e == nil:
		err = m.cfg.Store.Delete(id)
	}
	if err != nil {
		m.cfg.Logger.Warn("keeping the certificate on the node failed; a restarted agent will issue it anew",
			"spiffe_id", id.String(), "err", err)
	}
}

func recordLocked(id spiffeid.ID, e *entry) *secretstore.Record {
	chain := make([][]byte, len(e.cert.Chain))
	for i, c := range e.cert.Chain {
		chain[i] = c.Raw
	}
	block, _ := pem.Decode(e.cert.KeyPEM) // made by newCertificate
	return &secretstore.Record{ID: id, Chain: chain, Key: block.Bytes,
		Pods: slices.Clone(e.held.pods), ResourceNames: slices.Clone(e.held.names)}
}

// idLocks serializes work per identity. The zero value is ready.
type idLocks struct {
	mu    sync.Mutex
	locks map[spiffeid.ID]*idLock
}

type idLock struct {
	mu   sync.Mutex
	refs int
}

func (l *idLocks) lock(id spiffeid.ID) (unlock func()) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[spiffeid.ID]*idLock{}
	}
	k := l.locks[id]
	if k == nil {
		k = &idLock{}
		l.locks[id] = k
	}
	k.refs++
	l.mu.Unlock()
	k.mu.Lock()
	return func() {
		k.mu.Unlock()
		l.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(l.locks, id)
		}
		l.mu.Unlock()
	}
}

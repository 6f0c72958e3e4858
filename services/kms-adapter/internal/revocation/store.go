// Package revocation is kms-adapter's durable record of revoked identities, the authority citadel
// loads before it grants a renewal proof (see KeyManagementService.GetRevocations).
//
// A revocation covers every certificate of an identity issued before it. Signers backdate
// NotBefore for clock skew (the local CA by a minute, Vault by its role's not_before_duration), so a
// certificate signed seconds after a revocation has a NotBefore before it, and NotBefore alone
// would count the replacement as revoked. What cannot be backdated is what kms-adapter records at
// signing: while an identity is revoked, Guard records the serial of every certificate it signs
// whose NotBefore is not after the revocation's cutoff (the revocation time plus a margin for the
// signer's clock), durably and before the chain is returned. A certificate is then revoked when
// its NotBefore is not after the cutoff and its serial is not recorded. The record of an identity
// is small: serials are recorded only within minutes of a revocation, and an entry is dropped
// once every certificate it revokes has expired.
package revocation

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/atomicfile"
)

// FileName is the state file in the state directory.
const FileName = "revocations.json"

// SignerClockMargin is how far ahead of kms-adapter's clock a signer's clock may run (Vault signs
// with its own): a certificate with a NotBefore later than the revocation plus this margin was
// certainly signed after it, and needs no record.
const SignerClockMargin = 5 * time.Minute

// fileMode keeps the state readable by kms-adapter alone, like the CA keys beside it.
const fileMode = 0o600

// Entry is the revocation of one identity.
type Entry struct {
	ID        spiffeid.ID
	RevokedAt time.Time // kms-adapter's clock
	// Cutoff: a certificate of ID with a NotBefore after it was signed after the revocation.
	Cutoff time.Time
	// ExpiresAt: every certificate issued before RevokedAt has expired; the entry is dropped.
	ExpiresAt time.Time
	// Reissued holds the serials of certificates signed after the revocation whose NotBefore is
	// not after Cutoff.
	Reissued []*big.Int
}

// Revoked reports whether a certificate of e.ID with this NotBefore and serial is revoked.
func (e Entry) Revoked(notBefore time.Time, serial *big.Int) bool {
	if notBefore.After(e.Cutoff) {
		return false
	}
	return !slices.ContainsFunc(e.Reissued, func(s *big.Int) bool { return s.Cmp(serial) == 0 })
}

// State is every live revocation at a version.
type State struct {
	Version uint64 // increases with every change, across restarts
	Entries []Entry
}

// Config configures a Store.
type Config struct {
	// Dir holds FileName; it is created 0700 if missing.
	Dir string
	// MaxLifetime is the longest a certificate lives (kms-adapter's -max-ttl plus the signer's
	// backdating); an entry is kept this long (plus SignerClockMargin) after its revocation.
	MaxLifetime time.Duration
	Clock       clock.PassiveClock // nil means the real clock
}

// Store is the durable revocation state. It is safe for concurrent use. Every change is written
// to disk (atomically: a crash leaves the previous state) before it is visible or acknowledged.
type Store struct {
	cfg  Config
	path string

	mu      sync.Mutex
	version uint64
	entries map[spiffeid.ID]Entry
}

// Open loads the state from cfg.Dir; a missing file is an empty state, an unreadable one an error
// (forgetting revocations silently is what this package exists to prevent).
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" || cfg.MaxLifetime <= 0 {
		return nil, errors.New("revocation store: a directory and a positive max lifetime are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("revocation store: %w", err)
	}
	s := &Store{cfg: cfg, path: filepath.Join(cfg.Dir, FileName), entries: map[spiffeid.ID]Entry{}}
	data, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("revocation store: %w", err)
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("revocation store: parsing %s: %w", s.path, err)
	}
	s.version = f.Version
	for _, r := range f.Revocations {
		e, err := r.entry()
		if err != nil {
			return nil, fmt.Errorf("revocation store: %s: %w", s.path, err)
		}
		s.entries[e.ID] = e
	}
	return s, nil
}

// Revoke revokes every certificate of id issued until now, durably, and returns the entry. A
// second revocation of an identity replaces the first (and so revokes its replacements too).
func (s *Store) Revoke(id spiffeid.ID) (Entry, error) {
	now := s.cfg.Clock.Now()
	e := Entry{ID: id, RevokedAt: now, Cutoff: now.Add(SignerClockMargin),
		ExpiresAt: now.Add(s.cfg.MaxLifetime + SignerClockMargin)}
	s.mu.Lock()
	defer s.mu.Unlock()
	return e, s.change(func(m map[spiffeid.ID]Entry) { m[id] = e })
}

// Lookup returns the live revocation of id.
func (s *Store) Lookup(id spiffeid.ID) (Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok || !s.cfg.Clock.Now().Before(e.ExpiresAt) {
		return Entry{}, false
	}
	return e, true
}

// Snapshot returns the live state.
func (s *Store) Snapshot() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Clock.Now()
	st := State{Version: s.version}
	for _, e := range s.entries {
		if now.Before(e.ExpiresAt) {
			st.Entries = append(st.Entries, e)
		}
	}
	slices.SortFunc(st.Entries, func(a, b Entry) int { return a.RevokedAt.Compare(b.RevokedAt) })
	return st
}

// recordReissue records that the certificate serial of id was signed after the revocation made at
// revokedAt. If id was revoked again meanwhile, nothing is recorded: the certificate may have
// been signed before the newer revocation, so it counts as revoked by it.
func (s *Store) recordReissue(id spiffeid.ID, revokedAt time.Time, serial *big.Int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok || !e.RevokedAt.Equal(revokedAt) {
		return nil
	}
	return s.change(func(m map[spiffeid.ID]Entry) {
		e.Reissued = append(slices.Clip(e.Reissued), new(big.Int).Set(serial))
		m[id] = e
	})
}

// change applies edit to a copy of the entries, drops expired ones, and writes the result with the
// next version; only once it is on disk does it become the state. s.mu must be held.
func (s *Store) change(edit func(map[spiffeid.ID]Entry)) error {
	now := s.cfg.Clock.Now()
	next := make(map[spiffeid.ID]Entry, len(s.entries)+1)
	for id, e := range s.entries {
		if now.Before(e.ExpiresAt) {
			next[id] = e
		}
	}
	edit(next)
	f := file{Version: s.version + 1}
	for _, e := range next {
		f.Revocations = append(f.Revocations, record(e))
	}
	slices.SortFunc(f.Revocations, func(a, b fileEntry) int { return a.RevokedAt.Compare(b.RevokedAt) })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding revocations: %w", err)
	}
	if err := writeAtomic(s.path, append(data, '\n')); err != nil {
		return err
	}
	s.version, s.entries = f.Version, next
	return nil
}

// file is the on-disk form.
type file struct {
	Version     uint64      `json:"version"`
	Revocations []fileEntry `json:"revocations"`
}

type fileEntry struct {
	SPIFFEID  string    `json:"spiffe_id"`
	RevokedAt time.Time `json:"revoked_at"`
	Cutoff    time.Time `json:"not_before_cutoff"`
	ExpiresAt time.Time `json:"expires_at"`
	Reissued  []string  `json:"reissued_serials,omitempty"` // hex
}

func record(e Entry) fileEntry {
	r := fileEntry{SPIFFEID: e.ID.String(), RevokedAt: e.RevokedAt, Cutoff: e.Cutoff, ExpiresAt: e.ExpiresAt}
	for _, s := range e.Reissued {
		r.Reissued = append(r.Reissued, hex.EncodeToString(s.Bytes()))
	}
	return r
}

func (r fileEntry) entry() (Entry, error) {
	id, err := spiffeid.FromString(r.SPIFFEID)
	if err != nil {
		return Entry{}, fmt.Errorf("spiffe_id %q: %w", r.SPIFFEID, err)
	}
	e := Entry{ID: id, RevokedAt: r.RevokedAt, Cutoff: r.Cutoff, ExpiresAt: r.ExpiresAt}
	for _, h := range r.Reissued {
		b, err := hex.DecodeString(h)
		if err != nil {
			return Entry{}, fmt.Errorf("serial %q of %s: %w", h, id, err)
		}
		e.Reissued = append(e.Reissued, new(big.Int).SetBytes(b))
	}
	return e, nil
}

func writeAtomic(path string, data []byte) error { return atomicfile.Write(path, data, fileMode) }

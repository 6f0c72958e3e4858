// Package jwtkeys holds kms-adapter's JWT-SVID signing keys, signs JWT-SVIDs with the active one,
// serves the JWT bundle (JWKS) and rotates the keys on a schedule like the local CA's: a new key
// is prepared and published in the bundle before it signs, activated, and the previous key stays
// published until every token it signed has expired.
//
// The keys live in kms-adapter's state directory whatever the CA backend (local or Vault), like
// SPIRE's disk KeyManager: signing a JWT is then a local ECDSA signature, not a network round trip
// to Vault's transit engine per token (see docs/rotation.md, "JWT-SVID signing keys").
package jwtkeys

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/jwtaudience"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// ErrInvalidRequest: the signing request is malformed (no or bad audiences, a bad identity); the
// message says which.
var ErrInvalidRequest = errors.New("invalid jwt-svid request")

// ClockSkew is added to a retiring key's publication: a verifier whose clock runs a little
// behind still finds the key of a token it considers unexpired.
const ClockSkew = time.Minute

// Algorithms are the signature algorithms a key may use.
var Algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256}

// Config carries the manager's dependencies and policy.
type Config struct {
	Dir         string // the state file's directory (created 0700)
	TrustDomain spiffeid.TrustDomain
	// Algorithm of new keys (ES256, ES384, RS256); keys made earlier keep theirs.
	Algorithm jose.SignatureAlgorithm
	// KeyTTL is how long a key signs: the next one is prepared at ½ of it and activated at ⅚.
	KeyTTL time.Duration
	// MaxTokenTTL is the longest token signed; a retiring key stays published this long (plus
	// ClockSkew) after it stopped signing.
	MaxTokenTTL time.Duration
	Clock       clock.Clock
	Logger      *slog.Logger
	// Observer is told about every rotation step after it is persisted; it must not block.
	Observer func(Event)
}

// Event reports one rotation step.
type Event struct {
	Step          kms.RotationStep
	KeyIDs        []string // the prepared or activated key, or the retired ones
	BundleVersion uint64
	Scheduled     bool
}

// Manager owns the keys. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	mu      sync.Mutex // serializes steps
	current atomic.Pointer[state]
}

// Open loads the keys from cfg.Dir, or makes and stores a first, active key.
func Open(cfg Config) (*Manager, error) {
	switch {
	case cfg.Dir == "" || cfg.TrustDomain.IsZero() || cfg.Clock == nil || cfg.Logger == nil:
		return nil, errors.New("jwtkeys: dir, trust domain, clock and logger are required")
	case cfg.MaxTokenTTL <= 0 || cfg.KeyTTL <= 2*cfg.MaxTokenTTL:
		return nil, fmt.Errorf("jwtkeys: need 0 < 2 × max token ttl (%s) < key ttl (%s)", cfg.MaxTokenTTL, cfg.KeyTTL)
	}
	if _, err := algorithm(cfg.Algorithm); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg}
	st, err := load(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if st == nil {
		now := cfg.Clock.Now()
		k, err := generateKey(cfg.Algorithm, now)
		if err != nil {
			return nil, err
		}
		k.state, k.activatedAt = StateActive, now
		st = &state{version: 1, active: k}
		if err := store(cfg.Dir, st); err != nil {
			return nil, err
		}
		cfg.Logger.Info("jwt signing key created", logKeyID, k.id, logAlgorithm, string(k.alg))
	}
	m.current.Store(st)
	return m, nil
}

func algorithm(alg jose.SignatureAlgorithm) (jose.SignatureAlgorithm, error) {
	for _, a := range Algorithms {
		if a == alg {
			return a, nil
		}
	}
	return "", fmt.Errorf("jwt signing algorithm %q not supported (want ES256, ES384 or RS256)", alg)
}

// ParseAlgorithm checks a configured algorithm name.
func ParseAlgorithm(name string) (jose.SignatureAlgorithm, error) {
	return algorithm(jose.SignatureAlgorithm(name))
}

// SignRequest asks for one JWT-SVID.
type SignRequest struct {
	ID        spiffeid.ID
	Audiences []string
	TTL       time.Duration // 0 or more than MaxTokenTTL: MaxTokenTTL
}

// Token is a signed JWT-SVID.
type Token struct {
	Token     string // compact JWS
	KeyID     string
	ExpiresAt time.Time
}

// Sign signs a JWT-SVID with the active key: sub, aud, iat, exp; kid and typ JWT in the header.
func (m *Manager) Sign(req SignRequest) (Token, error) {
	if err := kms.CheckIdentity(req.ID, m.cfg.TrustDomain); err != nil {
		return Token{}, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if err := CheckAudiences(req.Audiences); err != nil {
		return Token{}, err
	}
	if req.TTL < 0 {
		return Token{}, fmt.Errorf("%w: ttl %s is negative", ErrInvalidRequest, req.TTL)
	}
	ttl := req.TTL
	if ttl == 0 || ttl > m.cfg.MaxTokenTTL {
		ttl = m.cfg.MaxTokenTTL
	}
	k := m.current.Load().active
	now := m.cfg.Clock.Now().Truncate(time.Second)
	exp := now.Add(ttl)
	raw, err := jwt.Signed(k.signer).Claims(jwt.Claims{
		Subject: req.ID.String(), Audience: jwt.Audience(req.Audiences),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp),
	}).Serialize()
	if err != nil {
		return Token{}, fmt.Errorf("signing jwt-svid for %s with key %s: %w", req.ID, k.id, err)
	}
	return Token{Token: raw, KeyID: k.id, ExpiresAt: exp}, nil
}

// CheckAudiences enforces libs/jwtaudience's rule, so that a caller cannot make kms-adapter sign
// (and every verifier parse) an unbounded token.
func CheckAudiences(auds []string) error {
	if err := jwtaudience.Check(auds); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	return nil
}

// Bundle is the JWT bundle: every published key.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	JWKS        []byte // RFC 7517 JWK Set, each key with "use": "jwt-svid"
	Version     uint64
}

// jwtSVIDUse is the SPIFFE bundle's "use" of a JWT-SVID key (SPIFFE Trust Domain and Bundle, §4.2).
const jwtSVIDUse = "jwt-svid"

// Bundle returns the published keys: the active one, a prepared one and the retiring ones.
func (m *Manager) Bundle() (Bundle, error) {
	st := m.current.Load()
	set := jose.JSONWebKeySet{}
	for _, k := range st.all() {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.private.Public(), KeyID: k.id, Algorithm: string(k.alg), Use: jwtSVIDUse})
	}
	data, err := json.Marshal(set)
	if err != nil {
		return Bundle{}, fmt.Errorf("encoding the jwt bundle: %w", err)
	}
	return Bundle{TrustDomain: m.cfg.TrustDomain, JWKS: data, Version: st.version}, nil
}

// ActiveKeyAge is how long the active key has been signing.
func (m *Manager) ActiveKeyAge() time.Duration {
	return m.cfg.Clock.Since(m.current.Load().active.activatedAt)
}

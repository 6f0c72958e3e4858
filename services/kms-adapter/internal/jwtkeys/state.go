package jwtkeys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/atomicfile"
)

// FileName is the state file in Config.Dir: every key of the rotation, private keys included.
const FileName = "jwt-keys.json"

const (
	dirMode  = 0o700
	fileMode = 0o600
)

// Key states, as persisted and reported.
const (
	StatePrepared = "prepared" // published in the bundle, not signing yet
	StateActive   = "active"   // signs
	StateRetiring = "retiring" // published until every token it signed has expired
)

// key is one signing key. Immutable once in a state that has been stored.
type key struct {
	id          string
	alg         jose.SignatureAlgorithm
	private     crypto.Signer
	state       string
	createdAt   time.Time
	activatedAt time.Time // active and retiring keys
	usableUntil time.Time // retiring keys: when the last token it signed expires
	signer      jose.Signer
}

// state is the whole rotation. Immutable once stored: a step builds a new one.
type state struct {
	version  uint64
	active   *key
	prepared *key   // nil if none
	retiring []*key // oldest last
}

func (s *state) all() []*key {
	keys := []*key{s.active}
	if s.prepared != nil {
		keys = append(keys, s.prepared)
	}
	return append(keys, s.retiring...)
}

type fileState struct {
	Version uint64    `json:"version"`
	Keys    []fileKey `json:"keys"`
}

type fileKey struct {
	ID          string    `json:"id"`
	Algorithm   string    `json:"algorithm"`
	State       string    `json:"state"`
	CreatedAt   time.Time `json:"created_at"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	UsableUntil time.Time `json:"usable_until,omitzero"`
	PKCS8       string    `json:"private_key_pkcs8"` // base64 (std)
}

// generateKey makes a key for alg, named by its RFC 7638 thumbprint (stable, and unique without
// coordination between replicas or restarts).
func generateKey(alg jose.SignatureAlgorithm, now time.Time) (*key, error) {
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.ES384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, rsaBits)
	default:
		return nil, fmt.Errorf("jwt signing algorithm %q not supported (want ES256, ES384 or RS256)", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generating a %s jwt signing key: %w", alg, err)
	}
	k := &key{alg: alg, private: priv, state: StatePrepared, createdAt: now}
	if k.id, err = keyID(priv.Public()); err != nil {
		return nil, err
	}
	return k, k.initSigner()
}

// rsaBits: RS256 keys are 2048 bits, the size SPIRE uses and the floor of every verifier.
const rsaBits = 2048

func keyID(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("jwt key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

func (k *key) initSigner() error {
	opts := (&jose.SignerOptions{}).WithType("JWT")
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: jose.JSONWebKey{Key: k.private, KeyID: k.id}}, opts)
	if err != nil {
		return fmt.Errorf("jwt signer for key %s: %w", k.id, err)
	}
	k.signer = s
	return nil
}

func (k *key) with(state string) *key {
	c := *k
	c.state = state
	return &c
}

// load reads the state file; (nil, nil) when there is none yet.
func load(dir string) (*state, error) {
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading jwt keys: %w", err)
	}
	var f fileState
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", filepath.Join(dir, FileName), err)
	}
	st := &state{version: f.Version}
	for _, fk := range f.Keys {
		k, err := decodeKey(fk)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, FileName), err)
		}
		switch {
		case k.state == StateActive && st.active == nil:
			st.active = k
		case k.state == StatePrepared && st.prepared == nil:
			st.prepared = k
		case k.state == StateRetiring:
			st.retiring = append(st.retiring, k)
		default:
			return nil, fmt.Errorf("%s: key %s: unexpected %q key", filepath.Join(dir, FileName), k.id, k.state)
		}
	}
	if st.active == nil {
		return nil, fmt.Errorf("%s: no active key", filepath.Join(dir, FileName))
	}
	return st, nil
}

func decodeKey(fk fileKey) (*key, error) {
	der, err := base64.StdEncoding.DecodeString(fk.PKCS8)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", fk.ID, err)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", fk.ID, err)
	}
	priv, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key %s: %T is not a signing key", fk.ID, parsed)
	}
	k := &key{id: fk.ID, alg: jose.SignatureAlgorithm(fk.Algorithm), private: priv, state: fk.State,
		createdAt: fk.CreatedAt, activatedAt: fk.ActivatedAt, usableUntil: fk.UsableUntil}
	if id, err := keyID(priv.Public()); err != nil || id != fk.ID {
		return nil, fmt.Errorf("key %s: id does not match its key (%s)", fk.ID, id)
	}
	return k, k.initSigner()
}

// store writes st atomically (0600 in a 0700 directory).
func store(dir string, st *state) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		return fmt.Errorf("securing %s: %w", dir, err)
	}
	f := fileState{Version: st.version}
	for _, k := range st.all() {
		der, err := x509.MarshalPKCS8PrivateKey(k.private)
		if err != nil {
			return fmt.Errorf("encoding jwt key %s: %w", k.id, err)
		}
		f.Keys = append(f.Keys, fileKey{ID: k.id, Algorithm: string(k.alg), State: k.state, CreatedAt: k.createdAt,
			ActivatedAt: k.activatedAt, UsableUntil: k.usableUntil, PKCS8: base64.StdEncoding.EncodeToString(der)})
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding jwt keys: %w", err)
	}
	return atomicfile.Write(filepath.Join(dir, FileName), data, fileMode)
}

package secretstore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// formatVersion is the version of the file format written; Load reads only this one.
const formatVersion = 1

// Names of the encryption field.
const algAES256GCM = "aes-256-gcm"

// envelope is a state file. The SPIFFE ID is in clear (it is in every certificate the workload
// presents): it names the record and, when sealed, is the additional data that binds the sealed
// content to it.
type envelope struct {
	Version  int    `json:"version"`
	SPIFFEID string `json:"spiffe_id"`
	// Payload is the record in clear, or nil when it is sealed.
	Payload *payload `json:"payload,omitempty"`
	// Encryption is "" (plain) or algAES256GCM; then KeyID names the key, Nonce is GCM's nonce,
	// and Sealed is the JSON payload sealed under the key.
	Encryption string `json:"encryption,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	Nonce      []byte `json:"nonce,omitempty"`
	Sealed     []byte `json:"sealed,omitempty"`
}

type payload struct {
	Chain         [][]byte `json:"chain"` // DER, leaf first
	Key           []byte   `json:"key"`   // PKCS#8 DER
	Pods          []Pod    `json:"pods"`
	ResourceNames []string `json:"resource_names"`
}

func (s *Store) encode(rec Record) ([]byte, error) {
	p := &payload{Chain: rec.Chain, Key: rec.Key, Pods: rec.Pods, ResourceNames: rec.ResourceNames}
	if p.Pods == nil {
		p.Pods = []Pod{}
	}
	if p.ResourceNames == nil {
		p.ResourceNames = []string{}
	}
	env := envelope{Version: formatVersion, SPIFFEID: rec.ID.String()}
	if s.seal == nil {
		env.Payload = p
		return json.Marshal(env)
	}
	plain, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	env.Encryption, env.KeyID = algAES256GCM, s.seal.keyID
	env.Nonce, env.Sealed, err = s.seal.seal(plain, additionalData(rec.ID.String()))
	if err != nil {
		return nil, err
	}
	return json.Marshal(env)
}

func (s *Store) decode(data []byte) (Record, error) {
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if dec.More() {
		return Record{}, fmt.Errorf("%w: data after the record", ErrCorrupt)
	}
	if env.Version != formatVersion {
		return Record{}, fmt.Errorf("%w: format version %d, this agent reads %d", ErrCorrupt, env.Version, formatVersion)
	}
	id, err := spiffeid.FromString(env.SPIFFEID)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	p := env.Payload
	switch {
	case env.Encryption == "" && s.seal != nil:
		return Record{}, fmt.Errorf("%w: %s is stored unencrypted, but the store has a key", ErrWrongKey, id)
	case env.Encryption == "":
	case env.Encryption != algAES256GCM:
		return Record{}, fmt.Errorf("%w: unknown encryption %q", ErrCorrupt, env.Encryption)
	case s.seal == nil:
		return Record{}, fmt.Errorf("%w: %s is encrypted (key id %s), but the store has no key", ErrWrongKey, id, env.KeyID)
	case env.KeyID != s.seal.keyID:
		return Record{}, fmt.Errorf("%w: %s is encrypted with key id %s, the store's key has id %s", ErrWrongKey, id, env.KeyID, s.seal.keyID)
	default:
		if env.Payload != nil {
			return Record{}, fmt.Errorf("%w: both sealed and plain content", ErrCorrupt)
		}
		plain, err := s.seal.open(env.Nonce, env.Sealed, additionalData(id.String()))
		if err != nil {
			return Record{}, fmt.Errorf("%w: %s does not decrypt (not sealed for this identity, or altered): %w", ErrCorrupt, id, err)
		}
		p = new(payload)
		if err := json.Unmarshal(plain, p); err != nil {
			return Record{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
	}
	if p == nil || len(p.Chain) == 0 || len(p.Key) == 0 {
		return Record{}, fmt.Errorf("%w: %s has no chain or no key", ErrCorrupt, id)
	}
	return Record{ID: id, Chain: p.Chain, Key: p.Key, Pods: p.Pods, ResourceNames: p.ResourceNames}, nil
}

// additionalData binds a sealed payload to its identity and to this format.
func additionalData(id string) []byte {
	return []byte(fmt.Sprintf("portcullis-secretstore/v%d\x00%s", formatVersion, id))
}

// KeySize is the size of an encryption key: AES-256.
const KeySize = 32

type sealer struct {
	aead  cipher.AEAD
	keyID string
}

func newSealer(key []byte) (*sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("state encryption key is %d bytes, want %d (AES-256)", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	// A one-way tag of the key, so that a file names the key it needs without revealing it.
	sum := sha256.Sum256(append([]byte("portcullis-secretstore key id\x00"), key...))
	return &sealer{aead: aead, keyID: hex.EncodeToString(sum[:8])}, nil
}

// seal uses a random nonce: a node writes far fewer than the 2^32 messages per key that random
// 96-bit GCM nonces allow (1,000 identities renewed twice a day is under a million a year).
func (s *sealer) seal(plain, ad []byte) (nonce, sealed []byte, err error) {
	nonce = make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	return nonce, s.aead.Seal(nil, nonce, plain, ad), nil
}

func (s *sealer) open(nonce, sealed, ad []byte) ([]byte, error) {
	if len(nonce) != s.aead.NonceSize() {
		return nil, errors.New("bad nonce")
	}
	return s.aead.Open(nil, nonce, sealed, ad)
}

// ReadKeyFile reads an encryption key: 32 bytes written as hex (openssl rand -hex 32) or base64
// (openssl rand -base64 32), surrounding white space ignored, or 32 raw random bytes.
func ReadKeyFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading state key: %w", err)
	}
	text := strings.TrimSpace(string(data))
	if k, err := hex.DecodeString(text); err == nil && len(k) == KeySize {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(text); err == nil && len(k) == KeySize {
		return k, nil
	}
	// 32 printable characters are a password or a short hex key, not 256 random bits (which are
	// all printable once in 10^14).
	if len(data) == KeySize && strings.ContainsFunc(string(data), func(r rune) bool { return r < ' ' || r > '~' }) {
		return data, nil
	}
	return nil, fmt.Errorf("state key in %s is not %d bytes, raw or as hex or base64 (make one with: openssl rand -hex %d)",
		path, KeySize, KeySize)
}

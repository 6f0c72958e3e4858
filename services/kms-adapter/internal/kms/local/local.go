// Package local is the embedded certificate authority of kms-adapter: a self-signed root and an
// intermediate, both ECDSA P-256, kept in a state directory so that a restart keeps the same CA.
// Leaves are signed in process with the intermediate. The CA rotates its root on SPIRE's schedule
// (kms.Rotator): rotation.go takes the steps, manifest.go persists them.
package local

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// ClockSkew is how far back NotBefore is set, so that a peer whose clock runs a little behind ours
// does not reject a certificate it has just been given.
const ClockSkew = time.Minute

// Organization is the only subject attribute of the certificates this CA issues.
const Organization = "Portcullis"

// Config configures the local CA.
type Config struct {
	StateDir    string               // holds the CA keys and certificates; created 0700
	TrustDomain spiffeid.TrustDomain // the only trust domain this CA certifies
	DefaultTTL  time.Duration        // leaf lifetime when the request asks for none
	MaxTTL      time.Duration        // longest leaf lifetime; also the intermediate's renewal margin
	RootTTL     time.Duration        // root (and intermediate) validity of each new CA
	Clock       clock.Clock          // nil means the real clock; RunRotation waits on it
	Observer    kms.RotationObserver // told about every rotation step; nil means none
	Logger      *slog.Logger         // nil means discard
}

func (c Config) validate() error {
	switch {
	case c.StateDir == "":
		return errors.New("state directory is required")
	case c.TrustDomain.IsZero():
		return errors.New("trust domain is required")
	case c.DefaultTTL <= 0 || c.MaxTTL <= 0 || c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("default ttl %s must be positive and at most max ttl %s", c.DefaultTTL, c.MaxTTL)
	case c.RootTTL <= 2*c.MaxTTL:
		return fmt.Errorf("root ttl %s must exceed twice the max ttl %s", c.RootTTL, c.MaxTTL)
	}
	return nil
}

// authority is one CA of the state directory. It is immutable once built: a rotation step or an
// intermediate renewal builds a new state (manifest.go) and swaps it in whole (atomic.Pointer), so
// the signing path takes no lock.
type authority struct {
	dir          string // CA directory relative to the state directory ("." for the flat files)
	root         *x509.Certificate
	rootKey      crypto.Signer     // nil once the CA no longer signs
	intermediate *x509.Certificate // nil once the CA no longer signs
	key          crypto.Signer     // the intermediate's key; nil once the CA no longer signs
	retireAt     time.Time         // previous CAs only: when the schedule drops the root
}

// CA is the local backend. It implements kms.Backend, kms.SigningChainer and kms.Rotator.
type CA struct {
	cfg     Config
	mu      sync.Mutex // serializes rotation steps and their observer calls; Sign never takes it
	current atomic.Pointer[state]
}

var (
	_ kms.Backend        = (*CA)(nil)
	_ kms.SigningChainer = (*CA)(nil)
	_ kms.Rotator        = (*CA)(nil)
)

// New loads the CA from cfg.StateDir, creating it on first start and issuing a new intermediate
// when the active one would expire within MaxTTL. A corrupt or incomplete state directory is an
// error naming the file; nothing in it is overwritten except by that intermediate renewal and the
// removal of what an interrupted rotation step left behind. New takes no rotation step itself:
// RunRotation does, from the state New found.
func New(cfg Config) (*CA, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("local ca: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	st, err := loadState(cfg)
	if err != nil {
		return nil, fmt.Errorf("local ca in %s: %w", cfg.StateDir, err)
	}
	ca := &CA{cfg: cfg}
	ca.current.Store(st)
	return ca, nil
}

// Sign implements kms.Backend.
func (ca *CA) Sign(_ context.Context, req kms.SignRequest) ([]*x509.Certificate, error) {
	if err := kms.CheckIdentity(req.ID, ca.cfg.TrustDomain); err != nil {
		return nil, err
	}
	if err := kms.CheckCSR(req.CSR); err != nil {
		return nil, err
	}
	auth := ca.current.Load().active
	now := ca.cfg.Clock.Now()
	if !now.Before(auth.intermediate.NotAfter) {
		// Only when RunRotation is not running (or cannot write the state directory).
		return nil, fmt.Errorf("%w: intermediate CA expired at %s; restart kms-adapter to issue a new one",
			kms.ErrUnavailable, auth.intermediate.NotAfter.UTC().Format(time.RFC3339))
	}
	ttl := req.TTL
	if ttl <= 0 {
		ttl = ca.cfg.DefaultTTL
	}
	ttl = min(ttl, ca.cfg.MaxTTL)
	notAfter := now.Add(ttl)
	if notAfter.After(auth.intermediate.NotAfter) {
		notAfter = auth.intermediate.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{Organization}},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{req.ID.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, auth.intermediate, req.CSR.PublicKey, auth.key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %s: %w", req.ID, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing signed certificate for %s: %w", req.ID, err)
	}
	return []*x509.Certificate{leaf, auth.intermediate, auth.root}, nil
}

// TrustBundle implements kms.Backend: the active root, the next one once prepared, and previous
// roots until they are retired.
func (ca *CA) TrustBundle(context.Context) (kms.Bundle, error) {
	st := ca.current.Load()
	return kms.Bundle{TrustDomain: ca.cfg.TrustDomain, Roots: st.roots(), Version: st.version}, nil
}

// SigningChain implements kms.SigningChainer: the active intermediate, then its root.
func (ca *CA) SigningChain(context.Context) ([]*x509.Certificate, error) {
	auth := ca.current.Load().active
	return []*x509.Certificate{auth.intermediate, auth.root}, nil
}

// fingerprint is the hex SHA-256 of a certificate, how logs name a root.
func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// serialLimit is 2^128: serials are 128 random bits, well past the 64 the CA/B forum requires, so
// that two leaves never share one even across replicas that do not coordinate.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generating serial number: %w", err)
		}
		if n.Sign() > 0 { // RFC 5280: serials are positive
			return n, nil
		}
	}
}

// Package local is the embedded certificate authority of kms-adapter: a self-signed root and an
// intermediate, both ECDSA P-256, kept in a state directory so that a restart keeps the same CA.
// Leaves are signed in process with the intermediate.
package local

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
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
	RootTTL     time.Duration        // root validity when a new CA is created; intermediate gets half
	Clock       clock.PassiveClock   // nil means the real clock
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

// authority is the CA material Sign uses. It is immutable once built; the CA swaps the whole value
// (atomic.Pointer) so that a later in-process rotation needs no lock on the signing path.
type authority struct {
	root         *x509.Certificate
	intermediate *x509.Certificate
	key          crypto.Signer // the intermediate's key
}

// CA is the local backend. It implements kms.Backend and kms.SigningChainer.
type CA struct {
	td         spiffeid.TrustDomain
	defaultTTL time.Duration
	maxTTL     time.Duration
	clock      clock.PassiveClock
	current    atomic.Pointer[authority]
}

var (
	_ kms.Backend        = (*CA)(nil)
	_ kms.SigningChainer = (*CA)(nil)
)

// New loads the CA from cfg.StateDir, creating it on first start and issuing a new intermediate
// when the current one would expire within MaxTTL. A corrupt or incomplete state directory is an
// error naming the file; nothing in it is overwritten except by that intermediate renewal.
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
	auth, err := loadOrCreate(cfg)
	if err != nil {
		return nil, fmt.Errorf("local ca in %s: %w", cfg.StateDir, err)
	}
	ca := &CA{td: cfg.TrustDomain, defaultTTL: cfg.DefaultTTL, maxTTL: cfg.MaxTTL, clock: cfg.Clock}
	ca.current.Store(auth)
	return ca, nil
}

// Sign implements kms.Backend.
func (ca *CA) Sign(_ context.Context, req kms.SignRequest) ([]*x509.Certificate, error) {
	if err := kms.CheckIdentity(req.ID, ca.td); err != nil {
		return nil, err
	}
	if err := kms.CheckCSR(req.CSR); err != nil {
		return nil, err
	}
	auth := ca.current.Load()
	now := ca.clock.Now()
	if !now.Before(auth.intermediate.NotAfter) {
		return nil, fmt.Errorf("%w: intermediate CA expired at %s; restart kms-adapter to issue a new one",
			kms.ErrUnavailable, auth.intermediate.NotAfter.UTC().Format(time.RFC3339))
	}
	ttl := req.TTL
	if ttl <= 0 {
		ttl = ca.defaultTTL
	}
	ttl = min(ttl, ca.maxTTL)
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

// TrustBundle implements kms.Backend.
func (ca *CA) TrustBundle(context.Context) (kms.Bundle, error) {
	return kms.Bundle{TrustDomain: ca.td, Roots: []*x509.Certificate{ca.current.Load().root}}, nil
}

// SigningChain implements kms.SigningChainer: the intermediate, then the root.
func (ca *CA) SigningChain(context.Context) ([]*x509.Certificate, error) {
	auth := ca.current.Load()
	return []*x509.Certificate{auth.intermediate, auth.root}, nil
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

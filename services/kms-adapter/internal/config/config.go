// Package config holds kms-adapter's configuration: flags (and PORTCULLIS_<FLAG> environment
// variables, see lifecycle.Main) and their validation.
package config

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/jwtkeys"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// Config is everything kms-adapter reads at start.
type Config struct {
	Listen      string // KMS gRPC API (mTLS, citadel only)
	AdminListen string // /metrics, /healthz, /readyz
	Backend     string // kms backend name, see kms.Registry
	StateDir    string // revocations (every backend); local backend: CA keys and certificates
	DefaultTTL  time.Duration
	MaxTTL      time.Duration
	RootTTL     time.Duration
	TLS         servicetls.Files

	// Rotation events: an external NATS (NATS.URL) or, by default, one embedded in this process.
	NATS          events.ConnConfig
	NATSEmbedded  bool
	NATSListen    string
	NATSStoreDir  string
	ExpiryWarning time.Duration
	Vault         Vault // -backend vault

	// JWT-SVID signing keys, kept in StateDir/jwt whatever the backend (see docs/rotation.md).
	JWTAlgorithm string
	JWTKeyTTL    time.Duration
	JWTMaxTTL    time.Duration
}

// EventsEnabled reports whether rotation events are published.
func (c *Config) EventsEnabled() bool { return c.NATS.Enabled() || c.NATSEmbedded }

// RegisterFlags binds the config to fs with the production defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:15030", "address of the KMS gRPC API (port 0 picks a free port)")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:15031", "address of /metrics, /healthz and /readyz")
	fs.StringVar(&c.Backend, "backend", kms.BackendLocal, "certificate authority backend: local or vault")
	fs.StringVar(&c.StateDir, "state-dir", "./var/lib/portcullis/kms", "directory of the revocation state (every backend) and, for the local backend, the CA keys and certificates (kept 0700); give it a persistent volume")
	fs.DurationVar(&c.DefaultTTL, "default-ttl", 24*time.Hour, "workload certificate lifetime when the request asks for none")
	fs.DurationVar(&c.MaxTTL, "max-ttl", 2160*time.Hour, "longest workload certificate lifetime; longer requests are clamped")
	fs.DurationVar(&c.RootTTL, "root-ttl", 8760*time.Hour, "local backend: validity of a newly created root CA and its intermediate; the next CA is prepared at half of it and takes over at five sixths")
	c.TLS.RegisterFlags(fs)
	c.NATS.RegisterFlags(fs)
	fs.BoolVar(&c.NATSEmbedded, "nats-embedded", true, "without -nats-url, run an embedded NATS server with JetStream for rotation events")
	fs.StringVar(&c.NATSListen, "nats-listen", "127.0.0.1:4222", "embedded NATS: client address (mTLS with the control-plane CA; port 0 picks a free port)")
	fs.StringVar(&c.NATSStoreDir, "nats-store-dir", "./var/lib/portcullis/nats", "embedded NATS: JetStream file store")
	fs.DurationVar(&c.ExpiryWarning, "expiry-warning", time.Hour, "announce an issued certificate this long before it expires (its holder should have renewed)")
	c.Vault.RegisterFlags(fs)
	fs.StringVar(&c.JWTAlgorithm, "jwt-algorithm", "ES256", "signature algorithm of new JWT-SVID signing keys: ES256, ES384 or RS256 (existing keys keep theirs until rotated out)")
	fs.DurationVar(&c.JWTKeyTTL, "jwt-key-ttl", 24*time.Hour, "how long a JWT-SVID signing key signs: the next key is prepared (published) at half of it and activated at five sixths")
	fs.DurationVar(&c.JWTMaxTTL, "jwt-max-ttl", time.Hour, "longest JWT-SVID lifetime signed (longer requests are clamped); a replaced key stays in the JWT bundle this long")
}

// Validate reports every problem at once, so that one run of the binary shows them all.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("-listen is required"))
	}
	if c.AdminListen == "" {
		errs = append(errs, errors.New("-admin-listen is required"))
	}
	if c.Backend == "" {
		errs = append(errs, errors.New("-backend is required"))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("-state-dir is required: it keeps the revocations (and the local backend's CA)"))
	}
	if c.DefaultTTL <= 0 || c.MaxTTL <= 0 {
		errs = append(errs, fmt.Errorf("-default-ttl (%s) and -max-ttl (%s) must be positive", c.DefaultTTL, c.MaxTTL))
	} else if c.DefaultTTL > c.MaxTTL {
		errs = append(errs, fmt.Errorf("-default-ttl (%s) must not exceed -max-ttl (%s)", c.DefaultTTL, c.MaxTTL))
	}
	// The intermediate lives half the root's life and is renewed once a max-ttl leaf no longer
	// fits; anything shorter would leave no room for a single full-length leaf.
	if c.RootTTL <= 2*c.MaxTTL {
		errs = append(errs, fmt.Errorf("-root-ttl (%s) must exceed twice -max-ttl (%s)", c.RootTTL, c.MaxTTL))
	}
	if c.Backend == kms.BackendVault {
		if err := c.Vault.Validate(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.NATS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !c.NATS.Enabled() && c.NATSEmbedded && (c.NATSListen == "" || c.NATSStoreDir == "") {
		errs = append(errs, errors.New("the embedded NATS needs -nats-listen and -nats-store-dir"))
	}
	if _, err := jwtkeys.ParseAlgorithm(c.JWTAlgorithm); err != nil {
		errs = append(errs, fmt.Errorf("-jwt-algorithm: %w", err))
	}
	// A key must sign for longer than the tokens it signs stay valid, or the bundle would
	// hold ever more retiring keys.
	if c.JWTMaxTTL <= 0 || c.JWTKeyTTL <= 2*c.JWTMaxTTL {
		errs = append(errs, fmt.Errorf("-jwt-max-ttl (%s) must be positive and -jwt-key-ttl (%s) more than twice it", c.JWTMaxTTL, c.JWTKeyTTL))
	}
	if c.ExpiryWarning <= 0 {
		errs = append(errs, fmt.Errorf("-expiry-warning (%s) must be positive", c.ExpiryWarning))
	}
	return errors.Join(errs...)
}

// Package config is citadel's configuration: flags (and PORTCULLIS_* environment variables, via
// lifecycle.Main) and their validation.
package config

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// Defaults follow Istio's (24h workload certificates, 90 days at most).
const (
	DefaultListen        = "127.0.0.1:15012"
	DefaultAdminListen   = "127.0.0.1:15014"
	DefaultTokenAudience = "portcullis"
	DefaultTTL           = 24 * time.Hour
	DefaultMaxTTL        = 90 * 24 * time.Hour
	DefaultCacheSize     = 100000
	DefaultBundleRefresh = 30 * time.Second
	// A node hosts at most a few hundred pods: a burst of 1000 lets all of them start (or re-issue
	// after a CA activation) at once, and 50/s afterwards keeps one node from flooding the CA.
	DefaultNodeSignRate  = 50
	DefaultNodeSignBurst = 1000
	// JWT-SVIDs live 5 minutes by default (SPIRE's default). The cap of 1 hour matches
	// kms-adapter's -jwt-max-ttl: a bearer token cannot be revoked, so a leaked one must die soon,
	// and a retired signing key stays published for that long.
	DefaultJWTTTL    = 5 * time.Minute
	DefaultJWTMaxTTL = time.Hour
)

// Config is citadel's configuration.
type Config struct {
	Listen        string
	AdminListen   string
	KMSAddr       string
	MCPAddr       string
	TokenIssuer   string
	TokenAudience string // comma-separated
	TokenKeys     workloadtoken.KeySource
	DefaultTTL    time.Duration
	MaxTTL        time.Duration
	CacheSize     int
	BundleRefresh time.Duration
	TLS           servicetls.Files
	NATS          events.ConnConfig
	NodeSignRate  float64
	NodeSignBurst int
	JWTDefaultTTL time.Duration
	JWTMaxTTL     time.Duration
	Attest        Attest
}

// RegisterFlags binds the config to fs with its defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", DefaultListen, "gRPC address for node agents (mTLS)")
	fs.StringVar(&c.AdminListen, "admin-listen", DefaultAdminListen, "HTTP address for /metrics, /healthz and /readyz")
	fs.StringVar(&c.KMSAddr, "kms-addr", "", "kms-adapter gRPC address (required)")
	fs.StringVar(&c.MCPAddr, "mcp-addr", "", "mcp-sync gRPC address (required)")
	fs.StringVar(&c.TokenIssuer, "token-issuer", "", `"iss" of workload tokens, e.g. the cluster's service-account issuer (required)`)
	fs.StringVar(&c.TokenAudience, "token-audience", DefaultTokenAudience, "accepted workload token audiences, comma-separated")
	c.TokenKeys.RegisterFlags(fs)
	fs.DurationVar(&c.DefaultTTL, "default-ttl", DefaultTTL, "workload certificate lifetime when the request asks for none")
	fs.DurationVar(&c.MaxTTL, "max-ttl", DefaultMaxTTL, "longest workload certificate lifetime; longer requests are clamped")
	fs.IntVar(&c.CacheSize, "cache-size", DefaultCacheSize, "most certificates kept in the issuance cache")
	fs.DurationVar(&c.BundleRefresh, "bundle-refresh", DefaultBundleRefresh, "interval between fetches of the trust bundle and the revocation state from kms-adapter (events fetch them at once)")
	c.TLS.RegisterFlags(fs)
	c.NATS.RegisterFlags(fs)
	fs.Float64Var(&c.NodeSignRate, "node-sign-rate", DefaultNodeSignRate, "signatures per second one node's agent may cause (cache hits are free); 0 disables the limit")
	fs.IntVar(&c.NodeSignBurst, "node-sign-burst", DefaultNodeSignBurst, "signatures one node may cause at once before -node-sign-rate applies")
	fs.DurationVar(&c.JWTDefaultTTL, "jwt-default-ttl", DefaultJWTTTL, "JWT-SVID lifetime when the request asks for none")
	fs.DurationVar(&c.JWTMaxTTL, "jwt-max-ttl", DefaultJWTMaxTTL, "longest JWT-SVID lifetime; longer requests are clamped (kms-adapter clamps to its own -jwt-max-ttl too)")
	c.Attest.RegisterFlags(fs)
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	required := func(flag, v string) {
		if strings.TrimSpace(v) == "" {
			errs = append(errs, fmt.Errorf("-%s is required", flag))
		}
	}
	required("listen", c.Listen)
	required("admin-listen", c.AdminListen)
	required("kms-addr", c.KMSAddr)
	required("mcp-addr", c.MCPAddr)
	required("token-issuer", c.TokenIssuer)
	if err := c.TokenKeys.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.Audiences()) == 0 {
		errs = append(errs, errors.New("-token-audience must name at least one audience"))
	}
	if c.DefaultTTL <= 0 {
		errs = append(errs, fmt.Errorf("-default-ttl must be positive, got %s", c.DefaultTTL))
	}
	if c.MaxTTL < c.DefaultTTL {
		errs = append(errs, fmt.Errorf("-max-ttl (%s) must be at least -default-ttl (%s)", c.MaxTTL, c.DefaultTTL))
	}
	if c.JWTDefaultTTL <= 0 || c.JWTMaxTTL < c.JWTDefaultTTL {
		errs = append(errs, fmt.Errorf("-jwt-default-ttl (%s) must be positive and at most -jwt-max-ttl (%s)", c.JWTDefaultTTL, c.JWTMaxTTL))
	}
	if c.CacheSize <= 0 {
		errs = append(errs, fmt.Errorf("-cache-size must be positive, got %d", c.CacheSize))
	}
	if c.BundleRefresh <= 0 {
		errs = append(errs, fmt.Errorf("-bundle-refresh must be positive, got %s", c.BundleRefresh))
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.NATS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.NodeSignRate < 0 || (c.NodeSignRate > 0 && c.NodeSignBurst < 1) {
		errs = append(errs, fmt.Errorf("-node-sign-rate (%g) must not be negative, and -node-sign-burst (%d) must be at least 1 with a rate", c.NodeSignRate, c.NodeSignBurst))
	}
	errs = append(errs, c.Attest.Validate())
	return errors.Join(errs...)
}

// Audiences splits -token-audience.
func (c *Config) Audiences() []string { return workloadtoken.SplitAudiences(c.TokenAudience) }

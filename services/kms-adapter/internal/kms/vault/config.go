// Package vault is kms-adapter's HashiCorp Vault backend: workload certificates from Vault's PKI
// secrets engine, in one of two modes.
//
//   - leaf: every leaf is signed by Vault (pki/sign/<role>). Simple, every issuance is Vault's,
//     but every citadel cache miss is a Vault round trip and Vault down means no new leaves.
//   - intermediate: Vault signs kms-adapter's own intermediate (pki/root/sign-intermediate) and
//     leaves are signed in process; the intermediate is renewed from Vault before it expires
//     (SPIRE's UpstreamAuthority model). Much faster, and signing survives a Vault outage
//     shorter than the intermediate's remaining life.
//
// The trust bundle is every root of the mount's issuers (pki/issuers), so that a root rotation
// through Vault's multi-issuer API shows both roots during the overlap.
package vault

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// Mode chooses who signs leaves.
type Mode string

const (
	ModeLeaf         Mode = "leaf"         // Vault signs every leaf
	ModeIntermediate Mode = "intermediate" // Vault signs our intermediate; we sign leaves
)

// AuthMethod chooses how kms-adapter logs in to Vault.
type AuthMethod string

const (
	AuthToken      AuthMethod = "token"      // a token read from a file (or VAULT_TOKEN)
	AuthAppRole    AuthMethod = "approle"    // role ID + secret ID read from a file
	AuthKubernetes AuthMethod = "kubernetes" // the pod's service account JWT read from a file
)

// Auth holds the login settings. Secrets are only ever file paths here: the files are read when
// logging in, so that a rotated secret ID or projected JWT is picked up on the next login.
type Auth struct {
	Method     AuthMethod
	Mount      string // auth mount path; empty means the method's name (approle, kubernetes)
	TokenFile  string // token: file holding the token; empty means the VAULT_TOKEN env variable
	RoleID     string // approle: role ID (an identifier, not a secret)
	SecretFile string // approle: file holding the secret ID
	Role       string // kubernetes: Vault role to log in as
	JWTFile    string // kubernetes: service account token file
}

// Config configures the Vault backend.
type Config struct {
	Address     string               // Vault's URL, e.g. https://vault.vault:8200
	CAFile      string               // PEM CA bundle that verifies Vault's TLS certificate; empty: system roots
	Mount       string               // PKI secrets engine mount, e.g. pki
	Role        string               // PKI role for pki/sign/<role> (leaf mode)
	Mode        Mode                 // leaf or intermediate
	Auth        Auth                 // how to log in
	TrustDomain spiffeid.TrustDomain // the only trust domain this backend certifies
	DefaultTTL  time.Duration        // leaf lifetime when the request asks for none
	MaxTTL      time.Duration        // longest leaf lifetime
	// IntermediateTTL is the lifetime asked of Vault for our intermediate (intermediate mode). It is
	// renewed at half its life (as SPIRE does) and leaves never outlive it, so it must be more
	// than twice DefaultTTL for a default leaf never to be shortened.
	IntermediateTTL time.Duration
	// BundleRefresh is how often the issuers are re-read in the background, to notice a root
	// rotation done in Vault; 0 means one minute.
	BundleRefresh time.Duration
	// OnBundleChange, if set, is called from Run with the new bundle whenever the set of roots
	// changes (an issuer added to or removed from the mount). It is the hook for rotation events.
	OnBundleChange func(kms.Bundle)
	Clock          clock.WithTicker // nil means the real clock
	Logger         *slog.Logger     // nil means discard
}

func (c *Config) validate() error {
	var errs []error
	if c.Address == "" {
		errs = append(errs, errors.New("vault address is required"))
	}
	if c.Mount == "" {
		errs = append(errs, errors.New("vault pki mount is required"))
	}
	switch c.Mode {
	case ModeLeaf:
		if c.Role == "" {
			errs = append(errs, errors.New("vault pki role is required in leaf mode"))
		}
	case ModeIntermediate:
		if c.IntermediateTTL <= 2*c.DefaultTTL {
			errs = append(errs, fmt.Errorf("intermediate ttl %s must exceed twice the default ttl %s", c.IntermediateTTL, c.DefaultTTL))
		}
	default:
		errs = append(errs, fmt.Errorf("vault mode %q is not leaf or intermediate", c.Mode))
	}
	switch c.Auth.Method {
	case AuthToken:
	case AuthAppRole:
		if c.Auth.RoleID == "" || c.Auth.SecretFile == "" {
			errs = append(errs, errors.New("approle auth needs a role id and a secret id file"))
		}
	case AuthKubernetes:
		if c.Auth.Role == "" || c.Auth.JWTFile == "" {
			errs = append(errs, errors.New("kubernetes auth needs a role and a service account token file"))
		}
	default:
		errs = append(errs, fmt.Errorf("vault auth method %q is not token, approle or kubernetes", c.Auth.Method))
	}
	if c.TrustDomain.IsZero() {
		errs = append(errs, errors.New("trust domain is required"))
	}
	if c.DefaultTTL <= 0 || c.MaxTTL <= 0 || c.DefaultTTL > c.MaxTTL {
		errs = append(errs, fmt.Errorf("default ttl %s must be positive and at most max ttl %s", c.DefaultTTL, c.MaxTTL))
	}
	return errors.Join(errs...)
}

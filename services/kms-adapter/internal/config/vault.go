package config

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/vault"
)

// Vault is the configuration of the vault backend (-backend vault). Secrets are never flag values:
// only paths of files that hold them (or VAULT_TOKEN for token auth), so they stay out of process
// listings and logs.
type Vault struct {
	Addr            string
	CAFile          string
	Mount           string
	Role            string
	Mode            string
	IntermediateTTL time.Duration
	Auth            string
	AuthMount       string
	TokenFile       string
	RoleID          string
	SecretIDFile    string
	K8sRole         string
	K8sJWTFile      string
}

// RegisterFlags binds the -vault-* flags.
func (v *Vault) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&v.Addr, "vault-addr", "", "vault backend: Vault's address, e.g. https://vault.vault.svc:8200")
	fs.StringVar(&v.CAFile, "vault-ca-file", "", "vault backend: PEM CA bundle that verifies Vault's TLS certificate (empty: system roots)")
	fs.StringVar(&v.Mount, "vault-mount", "pki", "vault backend: path of the PKI secrets engine")
	fs.StringVar(&v.Role, "vault-role", "", "vault backend: PKI role that signs leaves (pki/sign/<role>); required in leaf mode")
	fs.StringVar(&v.Mode, "vault-mode", string(vault.ModeLeaf), "vault backend: leaf (Vault signs every leaf) or intermediate (Vault signs kms-adapter's intermediate, leaves are signed locally)")
	fs.DurationVar(&v.IntermediateTTL, "vault-intermediate-ttl", 720*time.Hour, "vault backend, intermediate mode: lifetime asked for the intermediate; renewed at half of it")
	fs.StringVar(&v.Auth, "vault-auth", string(vault.AuthToken), "vault backend: auth method: token, approle or kubernetes")
	fs.StringVar(&v.AuthMount, "vault-auth-mount", "", "vault backend: path of the auth method (default: approle or kubernetes)")
	fs.StringVar(&v.TokenFile, "vault-token-file", "", "vault backend, token auth: file holding the token (empty: VAULT_TOKEN)")
	fs.StringVar(&v.RoleID, "vault-role-id", "", "vault backend, approle auth: role ID")
	fs.StringVar(&v.SecretIDFile, "vault-secret-id-file", "", "vault backend, approle auth: file holding the secret ID")
	fs.StringVar(&v.K8sRole, "vault-k8s-role", "", "vault backend, kubernetes auth: Vault role to log in as")
	fs.StringVar(&v.K8sJWTFile, "vault-k8s-jwt-file", "/var/run/secrets/kubernetes.io/serviceaccount/token", "vault backend, kubernetes auth: service account token file")
}

// Validate checks the flags the chosen mode and auth method need; c is the whole config for TTLs.
func (v *Vault) Validate(c *Config) error {
	var errs []error
	if v.Addr == "" {
		errs = append(errs, errors.New("-vault-addr is required by the vault backend"))
	}
	if v.Mount == "" {
		errs = append(errs, errors.New("-vault-mount is required by the vault backend"))
	}
	switch vault.Mode(v.Mode) {
	case vault.ModeLeaf:
		if v.Role == "" {
			errs = append(errs, errors.New("-vault-role is required in -vault-mode leaf"))
		}
	case vault.ModeIntermediate:
		if v.IntermediateTTL <= 2*c.DefaultTTL {
			errs = append(errs, fmt.Errorf("-vault-intermediate-ttl (%s) must exceed twice -default-ttl (%s)", v.IntermediateTTL, c.DefaultTTL))
		}
	default:
		errs = append(errs, fmt.Errorf("-vault-mode %q: want leaf or intermediate", v.Mode))
	}
	switch vault.AuthMethod(v.Auth) {
	case vault.AuthToken:
	case vault.AuthAppRole:
		if v.RoleID == "" || v.SecretIDFile == "" {
			errs = append(errs, errors.New("-vault-auth approle needs -vault-role-id and -vault-secret-id-file"))
		}
	case vault.AuthKubernetes:
		if v.K8sRole == "" || v.K8sJWTFile == "" {
			errs = append(errs, errors.New("-vault-auth kubernetes needs -vault-k8s-role and -vault-k8s-jwt-file"))
		}
	default:
		errs = append(errs, fmt.Errorf("-vault-auth %q: want token, approle or kubernetes", v.Auth))
	}
	return errors.Join(errs...)
}

// VaultBackend is the vault backend's configuration; the app adds the trust domain, clock and logger.
func (c *Config) VaultBackend() vault.Config {
	v := c.Vault
	return vault.Config{
		Address: v.Addr, CAFile: v.CAFile, Mount: v.Mount, Role: v.Role, Mode: vault.Mode(v.Mode),
		IntermediateTTL: v.IntermediateTTL, DefaultTTL: c.DefaultTTL, MaxTTL: c.MaxTTL,
		Auth: vault.Auth{Method: vault.AuthMethod(v.Auth), Mount: v.AuthMount, TokenFile: v.TokenFile,
			RoleID: v.RoleID, SecretFile: v.SecretIDFile, Role: v.K8sRole, JWTFile: v.K8sJWTFile},
	}
}

package vaulttest

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// PKI describes the PKI secrets engine Configure sets up.
type PKI struct {
	Mount       string               // e.g. "pki"
	Role        string               // e.g. "workload"
	TrustDomain spiffeid.TrustDomain // the role allows spiffe://<td>/* only
	RoleMaxTTL  time.Duration        // the role's max_ttl; 0 means 90 days
}

// rootTTL is long enough that no test leaf or intermediate is ever cut by the root's end.
const rootTTL = 10 * 365 * 24 * time.Hour

// ConfigurePKI mounts the PKI engine, generates an EC root and creates the workload role the way
// docs/configuration.md tells operators to: URI SANs of the trust domain only, no names taken
// from the CSR, no common name, leaves not stored.
func (s *Server) ConfigurePKI(p PKI) {
	s.t.Helper()
	if p.RoleMaxTTL == 0 {
		p.RoleMaxTTL = 2160 * time.Hour
	}
	s.write("sys/mounts/"+p.Mount, map[string]any{
		"type":   "pki",
		"config": map[string]any{"max_lease_ttl": dur(rootTTL)},
	})
	s.AddRoot(p.Mount, "root-1")
	s.write(p.Mount+"/roles/"+p.Role, map[string]any{
		"allowed_uri_sans":    "spiffe://" + p.TrustDomain.Name() + "/*",
		"enforce_hostnames":   false,
		"require_cn":          false,
		"use_csr_common_name": false,
		"use_csr_sans":        false,
		"allow_ip_sans":       false,
		"no_store":            true,
		"key_type":            "any",
		"max_ttl":             dur(p.RoleMaxTTL),
		"server_flag":         true,
		"client_flag":         true,
	})
}

// AddRoot generates one more EC root issuer in mount (a rotation with the multi-issuer API) and
// makes it the default issuer. It returns the issuer's ID.
func (s *Server) AddRoot(mount, name string) string {
	s.t.Helper()
	secret := s.write(mount+"/root/generate/internal", map[string]any{
		"common_name": "Portcullis test root " + name,
		"issuer_name": name,
		"key_type":    "ec",
		"key_bits":    256,
		"ttl":         dur(rootTTL),
	})
	id, _ := secret.Data["issuer_id"].(string)
	s.write(mount+"/config/issuers", map[string]any{"default": id})
	return id
}

// AppRole enables AppRole (once), writes a policy for the backend's paths and a role bound to
// it, and returns the role ID and a fresh secret ID.
func (s *Server) AppRole(p PKI, name string, tokenTTL time.Duration) (roleID, secretID string) {
	s.t.Helper()
	auths, err := s.Client().Sys().ListAuthWithContext(s.t.Context())
	if err != nil {
		s.t.Fatalf("listing auth methods: %v", err)
	}
	if _, ok := auths["approle/"]; !ok {
		s.write("sys/auth/approle", map[string]any{"type": "approle"})
	}
	s.write("sys/policies/acl/"+name, map[string]any{"policy": Policy(p)})
	s.write("auth/approle/role/"+name, map[string]any{
		"token_policies": []string{name},
		"token_ttl":      dur(tokenTTL),
		"token_max_ttl":  dur(4 * tokenTTL),
	})
	rid, err := s.Client().Logical().ReadWithContext(s.t.Context(), "auth/approle/role/"+name+"/role-id")
	if err != nil {
		s.t.Fatalf("reading role id: %v", err)
	}
	sid := s.write("auth/approle/role/"+name+"/secret-id", nil)
	return rid.Data["role_id"].(string), sid.Data["secret_id"].(string)
}

// Policy is the least a kms-adapter needs, as documented in docs/configuration.md.
func Policy(p PKI) string {
	return strings.NewReplacer("MOUNT", p.Mount, "ROLE", p.Role).Replace(`
path "MOUNT/sign/ROLE"                { capabilities = ["create", "update"] }
path "MOUNT/root/sign-intermediate"   { capabilities = ["create", "update"] }
path "MOUNT/issuers"                  { capabilities = ["list"] }
path "MOUNT/issuer/+/json"            { capabilities = ["read"] }
path "MOUNT/roles/ROLE"               { capabilities = ["read"] }
`)
}

func (s *Server) write(path string, data map[string]any) *api.Secret {
	s.t.Helper()
	secret, err := s.Client().Logical().WriteWithContext(s.t.Context(), path, data)
	if err != nil {
		s.t.Fatalf("vault write %s: %v", path, err)
	}
	if secret == nil {
		secret = &api.Secret{}
	}
	return secret
}

func dur(d time.Duration) string { return fmt.Sprintf("%ds", int64(d/time.Second)) }

// Root returns the certificate of the mount's default issuer (a root made by AddRoot).
func (s *Server) Root(mount string) *x509.Certificate {
	s.t.Helper()
	secret, err := s.Client().Logical().ReadWithContext(s.t.Context(), mount+"/issuer/default/json")
	if err != nil || secret == nil {
		s.t.Fatalf("reading %s default issuer: %v", mount, err)
	}
	pemText, _ := secret.Data["certificate"].(string)
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		s.t.Fatalf("%s default issuer: no PEM certificate", mount)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		s.t.Fatal(err)
	}
	return cert
}

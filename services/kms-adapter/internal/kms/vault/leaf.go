package vault

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strconv"
	"time"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// issuerMargin keeps a leaf's requested end a little before its issuer's: Vault refuses (with the
// default leaf_not_after_behavior "err") a leaf that would outlive the issuer.
const issuerMargin = time.Minute

// signWithVault has Vault sign req.CSR through pki/sign/<role>. The identity is sent as the only
// URI SAN and no common name is asked for; what Vault returns is checked again, because a role
// with use_csr_sans or use_csr_common_name set would copy names from the CSR, which is the
// caller's to choose.
func (b *Backend) signWithVault(ctx context.Context, req kms.SignRequest, ttl time.Duration) ([]*x509.Certificate, error) {
	if end := b.issuerNotAfter(); !end.IsZero() {
		left := end.Sub(b.clock.Now()) - issuerMargin
		if left <= 0 {
			return nil, fmt.Errorf("%w: vault issuer of %s expired at %s", kms.ErrUnavailable, b.cfg.Mount, end.UTC().Format(time.RFC3339))
		}
		ttl = min(ttl, left)
	}
	path := b.cfg.Mount + "/sign/" + b.cfg.Role
	secret, err := b.client.Logical().WriteWithContext(ctx, path, map[string]any{
		"csr":                  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw})),
		"uri_sans":             req.ID.String(),
		"ttl":                  strconv.FormatInt(int64(ttl/time.Second), 10) + "s",
		"exclude_cn_from_sans": true,
		"format":               "pem",
	})
	if err != nil {
		return nil, b.fail("write", path, err)
	}
	b.ok()
	if secret == nil {
		return nil, unexpected("write", path, "empty response")
	}
	leaves, err := parsePEMField(secret, "certificate")
	if err != nil || len(leaves) != 1 {
		return nil, unexpected("write", path, fmt.Sprintf("certificate field: %d certificates, %v", len(leaves), err))
	}
	issuers, err := parsePEMField(secret, "ca_chain")
	if err != nil || len(issuers) == 0 {
		return nil, unexpected("write", path, fmt.Sprintf("ca_chain field: %d certificates, %v", len(issuers), err))
	}
	leaf := leaves[0]
	if err := checkLeaf(leaf, req); err != nil {
		return nil, fmt.Errorf("%w: vault %s: %v", kms.ErrUnavailable, path, err)
	}
	b.setIssuerNotAfter(issuers[0].NotAfter)
	if len(secret.Warnings) > 0 {
		// e.g. "TTL ... is longer than permitted maxTTL ..., so maxTTL is being used": the role
		// clamps below -max-ttl. Worth knowing, not worth failing.
		b.logger.Debug("vault signed with warnings", "path", path, "warnings", secret.Warnings)
	}
	return dedupe(append([]*x509.Certificate{leaf}, issuers...)), nil
}

// checkLeaf refuses a leaf that does not carry exactly req.ID, or carries anything from the CSR's
// subject: the role is misconfigured and the leaf must not reach a workload.
func checkLeaf(leaf *x509.Certificate, req kms.SignRequest) error {
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != req.ID.String() {
		return fmt.Errorf("leaf carries URI SANs %v, want only %s (set use_csr_sans=false on the role)", leaf.URIs, req.ID)
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) != 0 || leaf.Subject.CommonName != "" {
		return fmt.Errorf("leaf copied names from the csr (cn %q, dns %v, email %v, ip %v): set use_csr_sans=false and use_csr_common_name=false on the role",
			leaf.Subject.CommonName, leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses)
	}
	if pub, ok := req.CSR.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return fmt.Errorf("leaf does not certify the csr's public key")
	}
	if leaf.IsCA {
		return fmt.Errorf("leaf is a CA")
	}
	return nil
}

// checkRole reads the role once at start (when the policy allows it) and warns about settings
// that make every signature fail or store every leaf. A denied read is fine: signing needs only
// pki/sign/<role>.
func (b *Backend) checkRole(ctx context.Context) {
	path := b.cfg.Mount + "/roles/" + b.cfg.Role
	secret, err := b.client.Logical().ReadWithContext(ctx, path)
	if err != nil || secret == nil {
		b.logger.Info("vault pki role not readable; skipping the role check", "path", path, "err", errString(err))
		return
	}
	if v, _ := secret.Data["use_csr_sans"].(bool); v {
		b.logger.Warn("vault pki role copies the csr's SANs; signatures will be refused (set use_csr_sans=false)", "path", path)
	}
	if v, _ := secret.Data["use_csr_common_name"].(bool); v {
		b.logger.Warn("vault pki role copies the csr's common name; signatures will be refused (set use_csr_common_name=false)", "path", path)
	}
	if v, _ := secret.Data["no_store"].(bool); !v {
		b.logger.Info("vault pki role stores every leaf (no_store=false); set no_store=true to spare Vault's storage", "path", path)
	}
	if n, ok := secret.Data["max_ttl"].(json.Number); ok {
		if secs, err := n.Int64(); err == nil && secs > 0 && time.Duration(secs)*time.Second < b.cfg.MaxTTL {
			b.logger.Warn("vault pki role max_ttl is below -max-ttl; Vault clamps longer leaves to it", "path", path,
				"role_max_ttl", time.Duration(secs)*time.Second, "max_ttl", b.cfg.MaxTTL)
		}
	}
}

func (b *Backend) issuerNotAfter() time.Time {
	b.bundleMu.Lock()
	defer b.bundleMu.Unlock()
	return b.leafIssuerEnd
}

func (b *Backend) setIssuerNotAfter(t time.Time) {
	b.bundleMu.Lock()
	b.leafIssuerEnd = t
	b.bundleMu.Unlock()
}

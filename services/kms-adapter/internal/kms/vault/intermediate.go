package vault

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"strconv"
	"time"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// leafBackdate is how far back a locally signed leaf's NotBefore is set, like Vault's own
// not_before_duration, so that a peer whose clock is a little behind accepts it.
const leafBackdate = 30 * time.Second

// authority is an intermediate signed by Vault and its key (kept in memory only: a restart gets
// a new one). Immutable; swapped whole on renewal.
type authority struct {
	cert    *x509.Certificate
	parents []*x509.Certificate // its issuers up to the root
	key     crypto.Signer
}

// renewIntermediate makes a new key and has Vault sign it as an intermediate CA through
// <mount>/root/sign-intermediate (the mount's default issuer), then signs leaves with it.
func (b *Backend) renewIntermediate(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating intermediate key: %w", err)
	}
	cn := "Portcullis kms-adapter intermediate " + b.cfg.TrustDomain.Name()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return fmt.Errorf("creating intermediate csr: %w", err)
	}
	path := b.cfg.Mount + "/root/sign-intermediate"
	secret, err := b.client.Logical().WriteWithContext(ctx, path, map[string]any{
		"csr":         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		"common_name": cn,
		"uri_sans":    b.cfg.TrustDomain.ID().String(),
		"ttl":         strconv.FormatInt(int64(b.cfg.IntermediateTTL/time.Second), 10) + "s",
		// Leaves only: this intermediate may not make further CAs.
		"max_path_length":      0,
		"exclude_cn_from_sans": true,
		"format":               "pem",
	})
	if err != nil {
		return b.fail("write", path, err)
	}
	b.ok()
	if secret == nil {
		return unexpected("write", path, "empty response")
	}
	certs, err := parsePEMField(secret, "certificate")
	if err != nil || len(certs) != 1 {
		return unexpected("write", path, fmt.Sprintf("certificate field: %d certificates, %v", len(certs), err))
	}
	chain, err := parsePEMField(secret, "ca_chain")
	if err != nil {
		return unexpected("write", path, err.Error())
	}
	cert := certs[0]
	if !cert.IsCA || !key.PublicKey.Equal(cert.PublicKey) {
		return unexpected("write", path, "the signed certificate is not a CA for our key")
	}
	var parents []*x509.Certificate
	for _, c := range dedupe(chain) {
		if !c.Equal(cert) {
			parents = append(parents, c)
		}
	}
	if len(parents) == 0 || cert.CheckSignatureFrom(parents[0]) != nil {
		return unexpected("write", path, "ca_chain does not hold the intermediate's issuer")
	}
	if life := cert.NotAfter.Sub(b.clock.Now()); life < b.cfg.IntermediateTTL/2 {
		b.logger.Warn("vault signed a shorter intermediate than asked (mount max_lease_ttl or issuer expiry)",
			"asked", b.cfg.IntermediateTTL, "got", life.Round(time.Second))
	}
	b.inter.Store(&authority{cert: cert, parents: parents, key: key})
	b.logger.Info("vault signed a new intermediate", "not_after", cert.NotAfter, "serial", fmt.Sprintf("%x", cert.SerialNumber))
	return nil
}

// keepIntermediate renews the intermediate at half its life, retrying with backoff while Vault
// is unavailable; the current intermediate keeps signing meanwhile.
func (b *Backend) keepIntermediate(ctx context.Context) error {
	for {
		a := b.inter.Load()
		renewAt := a.cert.NotBefore.Add(a.cert.NotAfter.Sub(a.cert.NotBefore) / 2)
		select {
		case <-ctx.Done():
			return nil
		case <-b.clock.After(renewAt.Sub(b.clock.Now())):
		}
		for wait := minBackoff; ; wait = min(2*wait, maxBackoff) {
			err := b.renewIntermediate(ctx)
			if err == nil || ctx.Err() != nil {
				break
			}
			b.logger.Error("renewing the intermediate from vault failed; retrying", "retry_in", wait,
				"intermediate_not_after", a.cert.NotAfter, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-b.clock.After(wait):
			}
		}
	}
}

func (b *Backend) intermediateValid() bool {
	a := b.inter.Load()
	return a != nil && b.clock.Now().Before(a.cert.NotAfter)
}

// signingChain is the chain leaves are signed with: intermediate first, root last.
func (b *Backend) signingChain() []*x509.Certificate {
	a := b.inter.Load()
	return append([]*x509.Certificate{a.cert}, a.parents...)
}

// signLocally signs a leaf with the Vault-signed intermediate, without calling Vault.
func (b *Backend) signLocally(req kms.SignRequest, ttl time.Duration) ([]*x509.Certificate, error) {
	a := b.inter.Load()
	now := b.clock.Now()
	if !now.Before(a.cert.NotAfter) {
		return nil, fmt.Errorf("%w: the intermediate from vault %s expired at %s and could not be renewed",
			kms.ErrUnavailable, b.cfg.Mount, a.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	serial, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)), // positive, per RFC 5280
		NotBefore:             now.Add(-leafBackdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{req.ID.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, req.CSR.PublicKey, a.key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %s: %w", req.ID, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing signed certificate for %s: %w", req.ID, err)
	}
	return append([]*x509.Certificate{leaf, a.cert}, a.parents...), nil
}

// serialLimit is 2^128: random 128-bit serials never collide across replicas.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

package vault

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"

	"github.com/hashicorp/vault/api"
)

// fetchRoots reads every issuer of the mount (multi-issuer API) and returns the distinct roots
// they chain to, oldest first. During a root rotation the mount holds the old and the new root
// as two issuers, and both are returned, so that leaves of either verify.
func (b *Backend) fetchRoots(ctx context.Context) ([]*x509.Certificate, error) {
	path := b.cfg.Mount + "/issuers"
	list, err := b.client.Logical().ListWithContext(ctx, path)
	if err != nil {
		return nil, b.fail("list", path, err)
	}
	var ids []string
	if list != nil {
		keys, _ := list.Data["keys"].([]any)
		for _, k := range keys {
			if s, ok := k.(string); ok {
				ids = append(ids, s)
			}
		}
	}
	if len(ids) == 0 {
		return nil, unexpected("list", path, "no issuers (is a PKI secrets engine mounted there, with a root generated or imported?)")
	}
	var roots []*x509.Certificate
	for _, id := range ids {
		chain, err := b.readIssuer(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, c := range chain {
			if isSelfSigned(c) && !slices.ContainsFunc(roots, func(r *x509.Certificate) bool { return bytes.Equal(r.Raw, c.Raw) }) {
				roots = append(roots, c)
			}
		}
	}
	if len(roots) == 0 {
		return nil, unexpected("read", b.cfg.Mount+"/issuer/*/json", "no issuer's ca_chain reaches a root (import the root with the intermediate's chain)")
	}
	b.ok()
	slices.SortFunc(roots, func(x, y *x509.Certificate) int { return x.NotBefore.Compare(y.NotBefore) })
	return roots, nil
}

// readIssuer returns an issuer's certificate followed by its ca_chain (issuer first, root last).
func (b *Backend) readIssuer(ctx context.Context, ref string) ([]*x509.Certificate, error) {
	path := b.cfg.Mount + "/issuer/" + ref + "/json"
	secret, err := b.client.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return nil, b.fail("read", path, err)
	}
	if secret == nil {
		return nil, unexpected("read", path, "no such issuer")
	}
	cert, err := parsePEMField(secret, "certificate")
	if err != nil {
		return nil, unexpected("read", path, err.Error())
	}
	chain, err := parsePEMField(secret, "ca_chain")
	if err != nil {
		return nil, unexpected("read", path, err.Error())
	}
	return dedupe(append(cert, chain...)), nil
}

// parsePEMField parses a response field that holds PEM certificates: a string or a list of them.
func parsePEMField(secret *api.Secret, field string) ([]*x509.Certificate, error) {
	var blocks []string
	switch v := secret.Data[field].(type) {
	case string:
		blocks = []string{v}
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok {
				blocks = append(blocks, s)
			}
		}
	case nil:
		return nil, nil
	default:
		return nil, fmt.Errorf("field %s: unexpected type %T", field, v)
	}
	var certs []*x509.Certificate
	for _, s := range blocks {
		rest := []byte(s)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("field %s: %w", field, err)
			}
			certs = append(certs, c)
		}
	}
	return certs, nil
}

// dedupe drops repeated certificates, keeping the first; Vault repeats the issuer in ca_chain.
func dedupe(certs []*x509.Certificate) []*x509.Certificate {
	out := certs[:0:0]
	for _, c := range certs {
		if !slices.ContainsFunc(out, func(o *x509.Certificate) bool { return bytes.Equal(o.Raw, c.Raw) }) {
			out = append(out, c)
		}
	}
	return out
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.IsCA && bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// sameRoots reports whether two bundles hold the same roots, in any order.
func sameRoots(x, y []*x509.Certificate) bool {
	if len(x) != len(y) {
		return false
	}
	for _, c := range x {
		if !slices.ContainsFunc(y, func(o *x509.Certificate) bool { return bytes.Equal(o.Raw, c.Raw) }) {
			return false
		}
	}
	return true
}

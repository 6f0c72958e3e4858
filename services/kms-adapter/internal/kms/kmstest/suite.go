package kmstest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// skewAllowance bounds how much longer than requested a leaf may live: backends backdate NotBefore
// for clock skew (the local CA by one minute, Vault by 30 seconds).
const skewAllowance = 5 * time.Minute

// Run checks that a backend keeps the kms.Backend contract. newBackend returns a fresh backend of
// trust domain td for each subtest; its cleanup belongs on t.
func Run(t *testing.T, newBackend func(t *testing.T) kms.Backend, td spiffeid.TrustDomain) {
	id := spiffeid.RequireFromPath(td, "/ns/default/sa/web")

	t.Run("TrustBundle", func(t *testing.T) {
		bundle := trustBundle(t, newBackend(t))
		if bundle.TrustDomain != td {
			t.Errorf("bundle trust domain = %s, want %s", bundle.TrustDomain, td)
		}
		if len(bundle.Roots) == 0 {
			t.Fatal("bundle has no roots")
		}
		for _, root := range bundle.Roots {
			if !root.IsCA || root.CheckSignatureFrom(root) != nil {
				t.Errorf("root %q is not a self-signed CA", root.Subject)
			}
		}
	})

	t.Run("LeafCarriesOnlyTheRequestedID", func(t *testing.T) {
		b := newBackend(t)
		key := NewKey(t)
		victim := spiffeid.RequireFromPath(td, "/ns/kube-system/sa/admin")
		chain := sign(t, b, CSR(t, HostileCSRDER(t, key, victim.URL())), id, time.Hour)
		leaf := chain[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
			t.Errorf("leaf URI SANs = %v, want only %s", leaf.URIs, id)
		}
		if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) != 0 {
			t.Errorf("leaf copied SANs from the csr: dns=%v email=%v ip=%v", leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses)
		}
		if leaf.Subject.CommonName != "" || slices.Contains(leaf.Subject.Organization, "Evil Corp") {
			t.Errorf("leaf copied the csr subject: %q", leaf.Subject)
		}
		if !key.PublicKey.Equal(leaf.PublicKey) {
			t.Error("leaf does not certify the csr's public key")
		}
		if leaf.IsCA {
			t.Error("leaf is a CA")
		}
		if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
			t.Errorf("leaf key usage = %b, want digitalSignature and no certSign", leaf.KeyUsage)
		}
	})

	t.Run("ChainVerifiesToTheTrustBundle", func(t *testing.T) {
		b := newBackend(t)
		chain := sign(t, b, CSR(t, CSRDER(t, NewKey(t))), id, time.Hour)
		bundle := trustBundle(t, b)
		if len(chain) < 2 {
			t.Fatalf("chain has %d certificates, want leaf ... root", len(chain))
		}
		if !slices.ContainsFunc(bundle.Roots, func(r *x509.Certificate) bool { return bytes.Equal(r.Raw, chain[len(chain)-1].Raw) }) {
			t.Error("the chain's last certificate is not a root of the trust bundle")
		}
		for _, usages := range [][]x509.ExtKeyUsage{
			{x509.ExtKeyUsageAny}, {x509.ExtKeyUsageServerAuth}, {x509.ExtKeyUsageClientAuth},
		} {
			verify(t, chain, bundle, usages)
		}
		got, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, bundle.Roots), x509svid.WithTime(midlife(chain[0])))
		if err != nil {
			t.Fatalf("not a valid X509-SVID: %v", err)
		}
		if got != id {
			t.Errorf("X509-SVID ID = %s, want %s", got, id)
		}
	})

	t.Run("TTL", func(t *testing.T) {
		b := newBackend(t)
		csr := CSR(t, CSRDER(t, NewKey(t)))
		if life := lifetime(sign(t, b, csr, id, time.Hour)[0]); life < time.Hour || life > time.Hour+skewAllowance {
			t.Errorf("ttl 1h: lifetime %s", life)
		}
		def := lifetime(sign(t, b, csr, id, 0)[0])
		if def <= skewAllowance {
			t.Errorf("ttl 0: lifetime %s, want the backend's default", def)
		}
		if neg := lifetime(sign(t, b, csr, id, -time.Hour)[0]); neg < def-skewAllowance || neg > def+skewAllowance {
			t.Errorf("negative ttl: lifetime %s, want the default %s", neg, def)
		}
		const century = 100 * 365 * 24 * time.Hour
		chain := sign(t, b, csr, id, century)
		if life := lifetime(chain[0]); life >= century-skewAllowance {
			t.Errorf("ttl 100y: lifetime %s, not clamped", life)
		}
		for _, issuer := range chain[1:] {
			if chain[0].NotAfter.After(issuer.NotAfter) {
				t.Errorf("leaf outlives its issuer %q (%s > %s)", issuer.Subject, chain[0].NotAfter, issuer.NotAfter)
			}
		}
	})

	t.Run("InvalidCSR", func(t *testing.T) {
		b := newBackend(t)
		rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		_, edKey, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		for name, csr := range map[string]*x509.CertificateRequest{
			"missing":       nil,
			"bad signature": BadSignatureCSR(t),
			"RSA-1024":      CSR(t, CSRDER(t, rsa1024)),
			"P-521":         CSR(t, CSRDER(t, crypto.Signer(p521))),
			"Ed25519":       CSR(t, CSRDER(t, edKey)),
		} {
			_, err := b.Sign(context.Background(), kms.SignRequest{CSR: csr, ID: id, TTL: time.Hour})
			if !errors.Is(err, kms.ErrInvalidCSR) {
				t.Errorf("%s csr: err = %v, want ErrInvalidCSR", name, err)
			}
		}
	})

	t.Run("InvalidIdentity", func(t *testing.T) {
		b := newBackend(t)
		csr := CSR(t, CSRDER(t, NewKey(t)))
		for name, bad := range map[string]spiffeid.ID{
			"foreign trust domain": spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("evil.example"), "/ns/default/sa/web"),
			"missing":              {},
			"bare trust domain":    spiffeid.RequireFromSegments(td),
		} {
			_, err := b.Sign(context.Background(), kms.SignRequest{CSR: csr, ID: bad, TTL: time.Hour})
			if !errors.Is(err, kms.ErrInvalidIdentity) {
				t.Errorf("%s: err = %v, want ErrInvalidIdentity", name, err)
			}
		}
	})

	t.Run("ConcurrentSigning", func(t *testing.T) {
		b := newBackend(t)
		bundle := trustBundle(t, b)
		const n = 50
		csrs := make([]*x509.CertificateRequest, n)
		for i := range csrs {
			csrs[i] = CSR(t, CSRDER(t, NewKey(t)))
		}
		chains := make([][]*x509.Certificate, n)
		errs := make([]error, n)
		start := make(chan struct{}) // release all signers at once to maximise overlap
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				chains[i], errs[i] = b.Sign(context.Background(), kms.SignRequest{CSR: csrs[i], ID: id, TTL: time.Hour})
			})
		}
		close(start)
		wg.Wait()
		serials := map[string]bool{}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("signer %d: %v", i, errs[i])
			}
			verify(t, chains[i], bundle, []x509.ExtKeyUsage{x509.ExtKeyUsageAny})
			serial := chains[i][0].SerialNumber.String()
			if serials[serial] {
				t.Errorf("serial %s issued twice", serial)
			}
			serials[serial] = true
		}
	})
}

func sign(t *testing.T, b kms.Backend, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	chain, err := b.Sign(context.Background(), kms.SignRequest{CSR: csr, ID: id, TTL: ttl})
	if err != nil {
		t.Fatalf("sign %s (ttl %s): %v", id, ttl, err)
	}
	if len(chain) == 0 {
		t.Fatalf("sign %s: empty chain", id)
	}
	return chain
}

func trustBundle(t *testing.T, b kms.Backend) kms.Bundle {
	t.Helper()
	bundle, err := b.TrustBundle(context.Background())
	if err != nil {
		t.Fatalf("trust bundle: %v", err)
	}
	return bundle
}

// verify checks chain against the bundle at the leaf's mid-life, so that a backend on a fake clock
// passes as well as one on the real clock.
func verify(t *testing.T, chain []*x509.Certificate, bundle kms.Bundle, usages []x509.ExtKeyUsage) {
	t.Helper()
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   midlife(chain[0]),
		KeyUsages:     usages,
	}
	for _, root := range bundle.Roots {
		opts.Roots.AddCert(root)
	}
	for _, inter := range chain[1:] {
		opts.Intermediates.AddCert(inter)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		t.Errorf("chain does not verify for %v: %v", usages, err)
	}
}

func midlife(c *x509.Certificate) time.Time { return c.NotBefore.Add(lifetime(c) / 2) }

func lifetime(c *x509.Certificate) time.Duration { return c.NotAfter.Sub(c.NotBefore) }

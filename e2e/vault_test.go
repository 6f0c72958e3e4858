package e2e

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/vaulttest"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

var vaultPKI = vaulttest.PKI{Mount: "pki", Role: "workload", TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}

// startVaultStack runs a real Vault (file storage, so it survives a restart) with the workload
// PKI role and an AppRole for kms-adapter, and the suite with kms-adapter on it in mode.
func startVaultStack(t *testing.T, mode string) (*stack.Stack, *vaulttest.Server) {
	t.Helper()
	srv := vaulttest.Start(t, vaulttest.Options{Persistent: true})
	srv.ConfigurePKI(vaultPKI)
	roleID, secretID := srv.AppRole(vaultPKI, "kms-adapter", time.Hour)
	s, _ := startStackWith(t, map[string][]string{stack.KMSAdapter: {
		"-backend", "vault", "-vault-addr", srv.Addr, "-vault-mount", vaultPKI.Mount, "-vault-role", vaultPKI.Role,
		"-vault-mode", mode, "-vault-auth", "approle", "-vault-role-id", roleID,
		"-vault-secret-id-file", vaulttest.WriteFile(t, "secret-id", secretID),
	}})
	return s, srv
}

// fetchWithin fetches p's SVID, waiting up to d (the agent retries citadel, citadel retries nothing).
func fetchWithin(t *testing.T, s *stack.Stack, p stack.Pod, d time.Duration) (*stack.SVID, error) {
	t.Helper()
	token, err := s.Token(p, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return stack.FetchSVID(ctx, s.Socket(p.Node), sdsclient.Credential{Token: token}, "sidecar~"+p.Key())
}

// spineOnVault is the spine's mTLS scenario with the leaves chaining to Vault's root.
func spineOnVault(t *testing.T, s *stack.Stack, srv *vaulttest.Server) (client, server *stack.SVID) {
	t.Helper()
	frontend, ledger := pod(t, "shop/frontend-0"), pod(t, "payments/ledger-0")
	client, err := fetch(t, s, frontend.Node, frontend)
	if err != nil {
		t.Fatal(err)
	}
	server, err = fetch(t, s, ledger.Node, ledger)
	if err != nil {
		t.Fatal(err)
	}
	verifyChain(t, client, "spiffe://cluster.local/ns/shop/sa/frontend")
	verifyChain(t, server, "spiffe://cluster.local/ns/payments/sa/ledger")
	// verifyChain checked the leaf against ROOTCA; ROOTCA must be Vault's root and nothing else.
	root := srv.Root(vaultPKI.Mount)
	if len(client.Roots) != 1 || !client.Roots[0].Equal(root) {
		t.Errorf("ROOTCA = %d roots, want Vault's root %q only", len(client.Roots), root.Subject)
	}
	if _, err := stack.Handshake(context.Background(), client, server); err != nil {
		t.Fatalf("mtls between the two workloads: %v", err)
	}
	return client, server
}

// Leaf mode: every leaf is Vault's. While Vault is sealed or stopped, sidecars keep their cached
// certificates and a new identity waits; both outages end without restarting kms-adapter.
func TestSpineOnVaultLeafMode(t *testing.T) {
	s, srv := startVaultStack(t, "leaf")
	client, server := spineOnVault(t, s, srv)
	frontend := pod(t, "shop/frontend-0")
	stillCached := func(when string) {
		t.Helper()
		again, err := fetch(t, s, frontend.Node, frontend)
		if err != nil {
			t.Fatalf("cached certificate not served while vault is %s: %v", when, err)
		}
		if again.Leaf().SerialNumber.Cmp(client.Leaf().SerialNumber) != 0 {
			t.Fatalf("agent served a different certificate while vault is %s", when)
		}
	}
	waits := func(p stack.Pod, when string) {
		t.Helper()
		if _, err := fetchWithin(t, s, p, 2*time.Second); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("a new identity while vault is %s got %v; want its request held open", when, err)
		}
	}

	srv.Seal()
	stillCached("sealed")
	cart := pod(t, "shop/cart-0")
	waits(cart, "sealed")
	srv.Unseal()
	svid, err := fetchWithin(t, s, cart, time.Minute)
	if err != nil {
		t.Fatalf("after unseal: %v", err)
	}
	verifyChain(t, svid, "spiffe://cluster.local/ns/shop/sa/cart")

	srv.Stop()
	stillCached("stopped")
	other := pod(t, "shop/frontend-1")
	waits(other, "stopped")
	srv.Restart()
	svid, err = fetchWithin(t, s, other, time.Minute)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if _, err := stack.Handshake(context.Background(), svid, server); err != nil {
		t.Fatalf("mtls with a certificate issued after the vault restart: %v", err)
	}
}

// Intermediate mode: leaves are signed by kms-adapter's Vault-signed intermediate, so a sealed
// Vault does not stop new identities from getting certificates.
func TestSpineOnVaultIntermediateMode(t *testing.T) {
	s, srv := startVaultStack(t, "intermediate")
	client, _ := spineOnVault(t, s, srv)
	// SDS carries the chain without its root: the leaf, then kms-adapter's intermediate, which
	// Vault's root signed.
	if n := len(client.Cert.Certificate); n != 2 {
		t.Fatalf("chain has %d certificates, want leaf and intermediate", n)
	}
	if inter := mustParse(t, client.Cert.Certificate[1]); inter.CheckSignatureFrom(srv.Root(vaultPKI.Mount)) != nil {
		t.Errorf("intermediate %q is not signed by Vault's root", inter.Subject)
	}
	srv.Seal()
	cart := pod(t, "shop/cart-0")
	svid, err := fetchWithin(t, s, cart, time.Minute)
	if err != nil {
		t.Fatalf("new identity while vault is sealed: %v", err)
	}
	if _, err := stack.Handshake(context.Background(), svid, client); err != nil {
		t.Fatalf("mtls with a certificate issued while vault is sealed: %v", err)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

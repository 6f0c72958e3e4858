package e2e

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// verifyChain checks that svid's leaf chains to its own ROOTCA and names want.
func verifyChain(t *testing.T, svid *stack.SVID, want string) {
	t.Helper()
	if got := svid.ID.String(); got != want {
		t.Fatalf("leaf URI SAN = %s, want %s", got, want)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range svid.Roots {
		roots.AddCert(r)
	}
	for _, der := range svid.Cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := svid.Leaf().Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("leaf does not chain to ROOTCA: %v", err)
	}
}

func TestSidecarsGetCertificatesAndHandshake(t *testing.T) {
	s, _ := startStack(t)
	frontend, ledger := pod(t, "shop/frontend-0"), pod(t, "payments/ledger-0")

	client, err := fetch(t, s, frontend.Node, frontend)
	if err != nil {
		t.Fatal(err)
	}
	server, err := fetch(t, s, ledger.Node, ledger)
	if err != nil {
		t.Fatal(err)
	}
	verifyChain(t, client, "spiffe://cluster.local/ns/shop/sa/frontend")
	verifyChain(t, server, "spiffe://cluster.local/ns/payments/sa/ledger")
	if life := client.Leaf().NotAfter.Sub(client.Leaf().NotBefore); life < 23*time.Hour || life > 25*time.Hour {
		t.Errorf("leaf lifetime %s, want the 24h default", life)
	}
	if _, err := stack.Handshake(context.Background(), client, server); err != nil {
		t.Fatalf("mtls between the two workloads: %v", err)
	}
	// The handshake must fail when the server expects somebody else: the authorization is real.
	other := *client
	other.ID = server.ID
	if _, err := stack.Handshake(context.Background(), &other, server); err == nil {
		t.Fatal("handshake succeeded although the client's certificate names another identity")
	}
}

func TestSpineSurvivesKMSRestart(t *testing.T) {
	s, _ := startStack(t)
	frontend, cart := pod(t, "shop/frontend-0"), pod(t, "shop/cart-0")
	before, err := fetch(t, s, frontend.Node, frontend)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Restart(ctx, stack.KMSAdapter); err != nil {
		t.Fatal(err)
	}
	// cart has no certificate yet, so this one must be signed by the restarted kms-adapter.
	after, err := fetch(t, s, cart.Node, cart)
	if err != nil {
		t.Fatal(err)
	}
	verifyChain(t, after, "spiffe://cluster.local/ns/shop/sa/cart")
	if !before.Roots[0].Equal(after.Roots[0]) {
		t.Fatal("the CA changed across a kms-adapter restart; it must persist")
	}
	if _, err := stack.Handshake(ctx, before, after); err != nil {
		t.Fatalf("handshake between pre- and post-restart certificates: %v", err)
	}
}

func TestManifestEditAddsPod(t *testing.T) {
	s, manifests := startStack(t)
	newPod := stack.Pod{Namespace: "shop", Name: "checkout-0", UID: "5b0c2f7e-8d3a-4e21-9c55-0a7d1f3e9b42",
		ServiceAccount: "cart", Node: "node-b"}
	if _, err := fetch(t, s, newPod.Node, newPod); err == nil {
		t.Fatal("a pod that is not in the manifests got a certificate")
	}
	manifest := `apiVersion: v1
kind: Pod
metadata:
  name: checkout-0
  namespace: shop
  uid: 5b0c2f7e-8d3a-4e21-9c55-0a7d1f3e9b42
spec:
  serviceAccountName: cart
  nodeName: node-b
  containers: [{name: app, image: checkout}]
`
	if err := os.WriteFile(filepath.Join(manifests, "checkout.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		svid, err := fetch(t, s, newPod.Node, newPod)
		if err == nil {
			verifyChain(t, svid, "spiffe://cluster.local/ns/shop/sa/cart")
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("new pod not served 20s after the manifest edit: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

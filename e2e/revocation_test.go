package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// A revocation is kept by kms-adapter and loaded by citadel: after restarts of both, a renewal proof
// by the revoked certificate is still refused. The replacement, signed seconds after the
// revocation (so its NotBefore, backdated a minute, is before it), stays renewable: it renews
// twice by proof, with no valid token, across those restarts.
func TestRevocationSurvivesRestartsAndTheReplacementRenewsByProof(t *testing.T) {
	t.Parallel()
	// kms-adapter backdates NotBefore by 1m, so a 2m certificate lives 3m and is renewed 21-39s
	// after issuance.
	const certTTL = 2 * time.Minute
	s, _ := startStackWith(t, map[string][]string{stack.NodeAgent: {"-cert-ttl", certTTL.String()}})
	p := pod(t, "shop/frontend-0") // on node-a
	// The agent sends a token only while it is valid for another minute: this one serves the first
	// certificate and the replacement (both within 15s), and every renewal after is by proof.
	token, err := s.Token(p, 75*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sc, err := stack.OpenSidecar(ctx, s.Socket(p.Node), sdsclient.Credential{Token: token}, "sidecar~"+p.Key())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	revoked := sc.Current()
	if _, err := admin(t, s).RevokeIdentity(ctx, &kmsv1.RevokeIdentityRequest{SpiffeId: revoked.ID.String(), Reason: "key compromise drill"}); err != nil {
		t.Fatal(err)
	}
	replacement := waitForNew(ctx, t, sc, "the revoked certificate replaced", revoked)
	if !replacement.Leaf().NotBefore.Before(time.Now().Add(-30 * time.Second)) {
		t.Fatalf("replacement NotBefore %s is not backdated: this test would prove nothing", replacement.Leaf().NotBefore)
	}

	conn, err := dialCitadel(s, "thief-on-node-a")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	citadel := authv1.NewIstioCertificateServiceClient(conn)
	wantRevoked := func(when string) {
		t.Helper()
		err := renewWithProof(ctx, t, citadel, revoked)
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "was revoked") {
			t.Fatalf("%s: renewal proof by the revoked certificate: %v, want Unauthenticated: … was revoked", when, err)
		}
	}
	wantRevoked("before any restart")

	renewed := waitForNew(ctx, t, sc, "the replacement renewed by proof", replacement)
	for _, svc := range []string{stack.KMSAdapter, stack.Citadel} {
		if err := s.Restart(ctx, svc); err != nil {
			t.Fatalf("restarting %s: %v", svc, err)
		}
	}
	wantRevoked("after restarting kms-adapter and citadel")
	waitForNew(ctx, t, sc, "the replacement's renewal renewed by proof after the restarts", renewed)
}

// waitForNew waits for a push of another certificate than old.
func waitForNew(ctx context.Context, t *testing.T, sc *stack.Sidecar, what string, old *stack.SVID) *stack.SVID {
	t.Helper()
	v, err := sc.WaitFor(ctx, func(v *stack.SVID) bool { return v.Leaf().SerialNumber.Cmp(old.Leaf().SerialNumber) != 0 })
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// renewWithProof asks citadel, as node-a's agent, for a certificate for a new key, proving
// possession of held's key and no token: what a thief of a revoked key would try.
func renewWithProof(ctx context.Context, t *testing.T, c authv1.IstioCertificateServiceClient, held *stack.SVID) error {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, c := range held.Cert.Certificate {
		cert, err := x509.ParseCertificate(c)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, cert)
	}
	proof, err := renewalproof.New(chain, held.Cert.PrivateKey.(crypto.Signer), der)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err = c.CreateCertificate(rctx, &authv1.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), Metadata: proof,
	})
	return err
}

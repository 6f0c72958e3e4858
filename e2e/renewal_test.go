package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// Envoy presents its token once, when it opens the SDS stream, and keeps the stream for the
// pod's life; tokens expire much sooner. The renewal must still reach the open stream.
func TestRenewalReachesOpenStreamAfterTokenExpired(t *testing.T) {
	t.Parallel()
	// kms-adapter backdates NotBefore by 1m, so a 3m certificate lives 4m and is renewed 48-72s
	// after issuance: well after the token below is dead (1s + the verifiers' 30s leeway).
	const certTTL = 3 * time.Minute
	s, _ := startStackWith(t, map[string][]string{stack.NodeAgent: {"-cert-ttl", certTTL.String()}})
	p := pod(t, "shop/frontend-0")
	token, err := s.Token(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), certTTL)
	defer cancel()
	c, err := sdsclient.Dial(s.Socket(p.Node))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Open(ctx, "sidecar~"+p.Key(), sdsclient.Credential{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Request(true, "default", "ROOTCA"); err != nil {
		t.Fatal(err)
	}
	first := recvSVID(t, st)
	if life := first.Leaf().NotAfter.Sub(first.Leaf().NotBefore); life > certTTL+2*time.Minute {
		t.Fatalf("leaf lifetime %s; the agent did not ask for %s", life, certTTL)
	}
	renewed := recvSVID(t, st) // the next push is the renewal
	if renewed.ID != first.ID {
		t.Fatalf("renewed certificate names %s, want %s", renewed.ID, first.ID)
	}
	if renewed.Leaf().SerialNumber.Cmp(first.Leaf().SerialNumber) == 0 || !renewed.Leaf().NotAfter.After(first.Leaf().NotAfter) {
		t.Fatal("the push after the renewal point carries the old certificate")
	}
	peer, err := fetch(t, s, "node-b", pod(t, "payments/ledger-0"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stack.Handshake(ctx, renewed, peer); err != nil {
		t.Fatalf("handshake with the renewed certificate: %v", err)
	}
}

func recvSVID(t *testing.T, st *sdsclient.Stream) *stack.SVID {
	t.Helper()
	secrets, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	svid, err := stack.SVIDFromSecrets(secrets)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

package secrets

import (
	"context"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// Envoy sends its token once per stream; the renewal at half-life must not depend on it.
func TestRenewalAfterTheTokenWentStaleProvesTheCurrentKey(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	m := newTestManager(ca, clk, &recorder{})
	sub := m.Subscribe(cartID)
	defer m.Unsubscribe(sub)

	issuer, err := workloadtoken.NewIssuer("https://issuer.test", clk)
	if err != nil {
		t.Fatal(err)
	}
	token, err := issuer.Issue(workloadtoken.Workload{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-0", PodUID: "u"},
		[]string{"portcullis"}, 10*time.Minute) // far shorter than the certificate
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.Certificate(context.Background(), cartID, Credential{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	ca.mu.Lock()
	firstCred := ca.creds[0]
	ca.mu.Unlock()
	if firstCred.Token != token || firstCred.Current != nil {
		t.Fatalf("first issuance sent %+v, want the token", firstCred)
	}

	clk.SetTime(at(first, 0.56)) // the token expired long ago
	eventually(t, "the renewal", func() bool { return ca.signs() == 2 })
	ca.mu.Lock()
	last := ca.creds[len(ca.creds)-1]
	ca.mu.Unlock()
	if last.Current == nil || last.Current.Leaf().SerialNumber.Cmp(first.Leaf().SerialNumber) != 0 || last.Token != "" {
		t.Fatalf("renewal sent token=%q current=%v, want the current certificate and no token", last.Token, last.Current != nil)
	}
}

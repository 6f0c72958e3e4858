package workloadtoken_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// fuzzSigner signs any payload with a key the fuzz verifier trusts, so that the fuzzer reaches
// the claim checks and not only the signature check.
type fuzzSigner struct {
	signer   jose.Signer
	verifier *workloadtoken.Verifier
	issuer   *workloadtoken.Issuer
}

func newFuzzSigner(f *testing.F) fuzzSigner {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "fuzz"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		f.Fatal(err)
	}
	clk := testingclock.NewFakePassiveClock(t0)
	iss, err := workloadtoken.NewIssuer(issuerName, clk)
	if err != nil {
		f.Fatal(err)
	}
	keys := iss.KeySet()
	keys.Keys = append(keys.Keys, jose.JSONWebKey{Key: &key.PublicKey, KeyID: "fuzz", Algorithm: string(jose.ES256), Use: "sig"})
	v, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{Issuer: issuerName, Audiences: []string{audience}, Keys: keys, Clock: clk})
	if err != nil {
		f.Fatal(err)
	}
	return fuzzSigner{signer: signer, verifier: v, issuer: iss}
}

func (s fuzzSigner) sign(t testing.TB, payload []byte) string {
	jws, err := s.signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// checkAccepted asserts what every accepted token must say: a pod-bound workload of a service
// account, valid now.
func checkAccepted(t *testing.T, w workloadtoken.Workload) {
	t.Helper()
	if w.Namespace == "" || w.ServiceAccount == "" || w.PodName == "" || w.PodUID == "" {
		t.Fatalf("accepted a token not bound to a pod: %+v", w)
	}
	if w.PodKey() != w.Namespace+"/"+w.PodName {
		t.Fatalf("PodKey %q of %+v", w.PodKey(), w)
	}
	if w.Expiry.Before(t0.Add(-workloadtoken.DefaultLeeway)) {
		t.Fatalf("accepted a token that expired at %s", w.Expiry)
	}
}

// FuzzVerify feeds Verify (and UnverifiedExpiry) whole tokens as a caller presents them.
func FuzzVerify(f *testing.F) {
	s := newFuzzSigner(f)
	tok, err := s.issuer.Issue(payments, []string{audience}, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	parts := strings.Split(tok, ".")
	f.Add(parts[0] + "." + parts[1] + ".")               // no signature
	f.Add(`{"alg":"none"}.` + parts[1] + ".")            // alg none
	f.Add(tok + "." + parts[2])                          // too many parts
	f.Add(s.sign(f, []byte(`{"iss":"`+issuerName+`"}`))) // not bound
	f.Add("eyJhbGciOiJFUzI1NiJ9.e30.AAAA")               // bad signature
	f.Add("")
	f.Fuzz(func(t *testing.T, raw string) {
		w, err := s.verifier.Verify(raw)
		if err == nil {
			checkAccepted(t, w)
			if exp, err := workloadtoken.UnverifiedExpiry(raw); err != nil || !exp.Equal(w.Expiry) {
				t.Fatalf("UnverifiedExpiry of an accepted token = %s, %v; Verify says %s", exp, err, w.Expiry)
			}
			return
		}
		_, _ = workloadtoken.UnverifiedExpiry(raw)
	})
}

// FuzzVerifyClaims signs arbitrary claims with a trusted key: only the claim checks stand between
// them and acceptance.
func FuzzVerifyClaims(f *testing.F) {
	s := newFuzzSigner(f)
	valid := claimsAt(t0, "system:serviceaccount:shop:payments", map[string]any{
		"namespace":      "shop",
		"pod":            map[string]any{"name": "payments-0", "uid": "u-1"},
		"serviceaccount": map[string]any{"name": "payments", "uid": "u-2"},
	})
	add := func(c map[string]any) {
		b, err := json.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	add(valid)
	for _, k := range []string{"iss", "sub", "aud", "exp", "nbf", "kubernetes.io"} {
		c := map[string]any{}
		for kk, v := range valid {
			if kk != k {
				c[kk] = v
			}
		}
		add(c)
	}
	f.Add([]byte(`{"aud":"portcullis-citadel","exp":1e300}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		w, err := s.verifier.Verify(s.sign(t, payload))
		if err != nil {
			return
		}
		checkAccepted(t, w)
		var c struct {
			Iss string `json:"iss"`
			Sub string `json:"sub"`
		}
		if err := json.Unmarshal(payload, &c); err != nil {
			t.Fatalf("accepted claims that are not a JSON object: %v", err)
		}
		if c.Iss != issuerName {
			t.Fatalf("accepted issuer %q", c.Iss)
		}
		if want := "system:serviceaccount:" + w.Namespace + ":" + w.ServiceAccount; c.Sub != want {
			t.Fatalf("accepted subject %q for %s", c.Sub, want)
		}
	})
}

package workloadtoken_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

const (
	issuerName = "https://kubernetes.default.svc"
	audience   = "portcullis-citadel"
)

// t0 has whole seconds: JWT times are seconds, so round trips compare exactly.
var t0 = time.Date(2030, time.March, 4, 5, 6, 7, 0, time.UTC)

var payments = workloadtoken.Workload{
	Namespace:      "shop",
	ServiceAccount: "payments",
	PodName:        "payments-7d9f-abcde",
	PodUID:         "0b4c7a52-1111-4d2e-9f00-5a6b7c8d9e0f",
}

type fixture struct {
	clock    *testingclock.FakePassiveClock
	issuer   *workloadtoken.Issuer
	verifier *workloadtoken.Verifier
}

// newFixture returns an issuer and a verifier that trusts it, sharing one fake clock.
func newFixture(t *testing.T) fixture {
	t.Helper()
	clk := testingclock.NewFakePassiveClock(t0)
	iss, err := workloadtoken.NewIssuer(issuerName, clk)
	if err != nil {
		t.Fatal(err)
	}
	v, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{
		Issuer: issuerName, Audiences: []string{"unrelated", audience}, Keys: iss.KeySet(), Clock: clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	return fixture{clock: clk, issuer: iss, verifier: v}
}

func (f fixture) issue(t *testing.T, ttl time.Duration) string {
	t.Helper()
	tok, err := f.issuer.Issue(payments, []string{audience}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f fixture) keyID() string { return f.issuer.KeySet().Keys[0].KeyID }

// sign serializes arbitrary claims as a JWT, for tokens the Issuer refuses to make.
func sign(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claimsAt are valid registered claims for payments at now, plus the given kubernetes.io claim.
func claimsAt(now time.Time, subject string, kubernetes map[string]any) map[string]any {
	return map[string]any{
		"iss":           issuerName,
		"sub":           subject,
		"aud":           []string{audience},
		"iat":           now.Unix(),
		"nbf":           now.Unix(),
		"exp":           now.Add(time.Hour).Unix(),
		"kubernetes.io": kubernetes,
	}
}

func requireErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("Verify error = %v, want %v", err, want)
	}
}

func TestIssueVerifyRoundTrip(t *testing.T) {
	f := newFixture(t)
	got, err := f.verifier.Verify(f.issue(t, time.Hour))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	want := payments
	want.Expiry = t0.Add(time.Hour)
	if got.Namespace != want.Namespace || got.ServiceAccount != want.ServiceAccount ||
		got.PodName != want.PodName || got.PodUID != want.PodUID || !got.Expiry.Equal(want.Expiry) {
		t.Fatalf("Verify = %+v, want %+v", got, want)
	}
	if got.PodKey() != "shop/payments-7d9f-abcde" {
		t.Errorf("PodKey = %q", got.PodKey())
	}
}

func TestVerifyRealClockByDefault(t *testing.T) {
	iss, err := workloadtoken.NewIssuer(issuerName, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{
		Issuer: issuerName, Audiences: []string{audience}, Keys: iss.KeySet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := iss.Issue(payments, []string{audience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("Verify with real clocks: %v", err)
	}
}

func TestVerifyExpired(t *testing.T) {
	f := newFixture(t)
	tok := f.issue(t, 10*time.Minute)
	expiry := t0.Add(10 * time.Minute)

	f.clock.SetTime(expiry.Add(10 * time.Second))
	if _, err := f.verifier.Verify(tok); err != nil {
		t.Fatalf("expired 10s ago is within the default %v leeway, got %v", workloadtoken.DefaultLeeway, err)
	}

	f.clock.SetTime(expiry.Add(2 * time.Minute))
	_, err := f.verifier.Verify(tok)
	requireErr(t, err, workloadtoken.ErrExpired)
	if !strings.Contains(err.Error(), expiry.Format(time.RFC3339)) {
		t.Errorf("error %q does not name the expiry %s", err, expiry.Format(time.RFC3339))
	}
}

func TestVerifyHonorsConfiguredLeeway(t *testing.T) {
	f := newFixture(t)
	tok := f.issue(t, 10*time.Minute)
	strict, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{
		Issuer: issuerName, Audiences: []string{audience}, Keys: f.issuer.KeySet(), Clock: f.clock, Leeway: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.SetTime(t0.Add(10*time.Minute + 10*time.Second))
	_, err = strict.Verify(tok)
	requireErr(t, err, workloadtoken.ErrExpired)
}

func TestVerifyNotYetValid(t *testing.T) {
	f := newFixture(t)
	// The issuer's clock runs ahead of the verifier's.
	ahead := testingclock.NewFakePassiveClock(t0.Add(2 * time.Minute))
	early, err := workloadtoken.IssuerFromKey(issuerName, f.issuer.Key(), ahead)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := early.Issue(payments, []string{audience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.verifier.Verify(tok)
	requireErr(t, err, workloadtoken.ErrNotYetValid)

	// Skew within the leeway is tolerated.
	ahead.SetTime(t0.Add(10 * time.Second))
	tok, err = early.Issue(payments, []string{audience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.verifier.Verify(tok); err != nil {
		t.Fatalf("token from 10s in the future: %v", err)
	}
}

func TestVerifyRejectsOtherSigningKey(t *testing.T) {
	f := newFixture(t)

	t.Run("same issuer name, own key id", func(t *testing.T) {
		impostor, err := workloadtoken.NewIssuer(issuerName, f.clock)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := impostor.Issue(payments, []string{audience}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.verifier.Verify(tok)
		requireErr(t, err, workloadtoken.ErrSignature)
	})

	t.Run("trusted key id, other key", func(t *testing.T) {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tok := sign(t, jose.ES256, other, f.keyID(), claimsAt(t0, "system:serviceaccount:shop:payments", map[string]any{
			"namespace":      "shop",
			"pod":            map[string]string{"name": payments.PodName, "uid": payments.PodUID},
			"serviceaccount": map[string]string{"name": "payments"},
		}))
		_, err = f.verifier.Verify(tok)
		requireErr(t, err, workloadtoken.ErrSignature)
	})
}

func TestVerifyRejectsWrongIssuer(t *testing.T) {
	f := newFixture(t)
	// Signed by the trusted key, so only the "iss" claim is wrong.
	other, err := workloadtoken.IssuerFromKey("https://other.example", f.issuer.Key(), f.clock)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := other.Issue(payments, []string{audience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.verifier.Verify(tok)
	requireErr(t, err, workloadtoken.ErrIssuer)
	if !strings.Contains(err.Error(), "https://other.example") {
		t.Errorf("error %q does not name the issuer", err)
	}
}

func TestVerifyRejectsWrongAudience(t *testing.T) {
	f := newFixture(t)
	tok, err := f.issuer.Issue(payments, []string{"vault"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.verifier.Verify(tok)
	requireErr(t, err, workloadtoken.ErrAudience)
}

func TestVerifyRequiresPodBinding(t *testing.T) {
	f := newFixture(t)
	for name, k8s := range map[string]map[string]any{
		"no pod": {
			"namespace":      "shop",
			"serviceaccount": map[string]string{"name": "payments", "uid": "sa-uid"},
		},
		"pod without uid": {
			"namespace":      "shop",
			"pod":            map[string]string{"name": payments.PodName},
			"serviceaccount": map[string]string{"name": "payments"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			tok := sign(t, jose.ES256, f.issuer.Key(), f.keyID(), claimsAt(t0, "system:serviceaccount:shop:payments", k8s))
			_, err := f.verifier.Verify(tok)
			requireErr(t, err, workloadtoken.ErrNotBound)
		})
	}
}

func TestVerifyRejectsSubjectMismatch(t *testing.T) {
	f := newFixture(t)
	tok := sign(t, jose.ES256, f.issuer.Key(), f.keyID(), claimsAt(t0, "system:serviceaccount:kube-system:admin", map[string]any{
		"namespace":      "shop",
		"pod":            map[string]string{"name": payments.PodName, "uid": payments.PodUID},
		"serviceaccount": map[string]string{"name": "payments"},
	}))
	_, err := f.verifier.Verify(tok)
	requireErr(t, err, workloadtoken.ErrMalformed)
	if !strings.Contains(err.Error(), "kube-system:admin") {
		t.Errorf("error %q does not name the subject", err)
	}
}

func TestVerifyRejectsGarbage(t *testing.T) {
	f := newFixture(t)
	b64 := base64.RawURLEncoding.EncodeToString
	payload, err := json.Marshal(claimsAt(t0, "system:serviceaccount:shop:payments", map[string]any{
		"namespace":      "shop",
		"pod":            map[string]string{"name": payments.PodName, "uid": payments.PodUID},
		"serviceaccount": map[string]string{"name": "payments"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string]string{
		"empty":     "",
		"not a jwt": "hello",
		"bad parts": "a.b.c",
		"alg none":  b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + b64(payload) + ".",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.verifier.Verify(raw)
			requireErr(t, err, workloadtoken.ErrMalformed)
		})
	}
}

// TestVerifyRefusesAlgorithmConfusion signs HS256 tokens with the issuer's public key in the forms
// an attacker can obtain, hoping the verifier uses it as an HMAC secret.
func TestVerifyRefusesAlgorithmConfusion(t *testing.T) {
	f := newFixture(t)
	der, err := x509.MarshalPKIXPublicKey(&f.issuer.Key().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(f.issuer.KeySet())
	if err != nil {
		t.Fatal(err)
	}
	claims := claimsAt(t0, "system:serviceaccount:shop:payments", map[string]any{
		"namespace":      "shop",
		"pod":            map[string]string{"name": payments.PodName, "uid": payments.PodUID},
		"serviceaccount": map[string]string{"name": "payments"},
	})
	for name, secret := range map[string][]byte{
		"pem":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"der":  der,
		"jwks": jwks,
	} {
		t.Run(name, func(t *testing.T) {
			w, err := f.verifier.Verify(sign(t, jose.HS256, secret, f.keyID(), claims))
			if err == nil {
				t.Fatalf("HS256 token accepted as %v", w)
			}
			if !errors.Is(err, workloadtoken.ErrMalformed) && !errors.Is(err, workloadtoken.ErrSignature) {
				t.Fatalf("Verify error = %v, want ErrMalformed or ErrSignature", err)
			}
		})
	}
}

func TestLoadKeySet(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t)

	good := filepath.Join(dir, "jwks.json")
	b, err := json.Marshal(f.issuer.KeySet())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, good, b)
	set, err := workloadtoken.LoadKeySet(good)
	if err != nil {
		t.Fatalf("LoadKeySet: %v", err)
	}
	v, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{Issuer: issuerName, Audiences: []string{audience}, Keys: set, Clock: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(f.issue(t, time.Hour)); err != nil {
		t.Fatalf("Verify with loaded keys: %v", err)
	}

	badJSON := filepath.Join(dir, "bad.json")
	writeFile(t, badJSON, []byte(`{"keys": [`))
	empty := filepath.Join(dir, "empty.json")
	writeFile(t, empty, []byte(`{"keys": []}`))
	for name, path := range map[string]string{
		"missing":  filepath.Join(dir, "missing.json"),
		"bad json": badJSON,
		"empty":    empty,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := workloadtoken.LoadKeySet(path)
			if err == nil {
				t.Fatal("LoadKeySet succeeded")
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name %s", err, path)
			}
		})
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestNewVerifierValidatesConfig(t *testing.T) {
	keys := newFixture(t).issuer.KeySet()
	for name, tc := range map[string]struct {
		cfg  workloadtoken.VerifierConfig
		want string
	}{
		"no issuer":    {workloadtoken.VerifierConfig{Audiences: []string{audience}, Keys: keys}, "issuer"},
		"no audiences": {workloadtoken.VerifierConfig{Issuer: issuerName, Keys: keys}, "audience"},
		"no keys":      {workloadtoken.VerifierConfig{Issuer: issuerName, Audiences: []string{audience}}, "keys"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := workloadtoken.NewVerifier(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewVerifier error = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{Issuer: issuerName, Audiences: []string{audience}, Keys: keys}); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

func TestVerifyNodeClaim(t *testing.T) {
	f := newFixture(t)
	onNode := payments
	onNode.NodeName, onNode.NodeUID = "node-a", "node-uid-1"
	raw, err := f.issuer.Issue(onNode, []string{audience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w, err := f.verifier.Verify(raw)
	if err != nil {
		t.Fatal(err)
	}
	if w.NodeName != "node-a" || w.NodeUID != "node-uid-1" {
		t.Fatalf("node claim = %q/%q, want node-a/node-uid-1", w.NodeName, w.NodeUID)
	}
	raw, err = f.issuer.Issue(payments, []string{audience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if w, err = f.verifier.Verify(raw); err != nil || w.NodeName != "" {
		t.Fatalf("token without node claim: %+v, %v; want no node", w, err)
	}
}

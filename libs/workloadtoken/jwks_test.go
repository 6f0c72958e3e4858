package workloadtoken_test

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// TestRemoteVerifierFollowsKeyRotation serves the issuer's JWKS over HTTPS with a bearer token
// check, then rotates the signing key: a token signed with the new key verifies after one
// refetch, and refetches are rate-limited.
func TestRemoteVerifierFollowsKeyRotation(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	oldKey, err := workloadtoken.NewIssuer("https://issuer.test", clk)
	if err != nil {
		t.Fatal(err)
	}
	newKey, err := workloadtoken.NewIssuer("https://issuer.test", clk)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	served := oldKey.KeySet()
	var fetches atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer reader" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		_ = json.NewEncoder(w).Encode(served)
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	bearer := filepath.Join(dir, "token")
	if err := os.WriteFile(bearer, []byte("reader\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := workloadtoken.NewRemoteVerifier(workloadtoken.JWKSConfig{
		URL: srv.URL + "/openid/v1/jwks", CAFile: ca, BearerTokenFile: bearer,
		Issuer: "https://issuer.test", Audiences: []string{"portcullis"}, Clock: clk,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	pod := workloadtoken.Workload{Namespace: "shop", ServiceAccount: "web", PodName: "web-0", PodUID: "uid-1"}
	tok, _ := oldKey.Issue(pod, []string{"portcullis"}, time.Hour)
	if w, err := v.Verify(tok); err != nil || w.PodUID != "uid-1" {
		t.Fatalf("Verify = %v, %v", w, err)
	}

	mu.Lock()
	served = jose.JSONWebKeySet{Keys: append(newKey.KeySet().Keys, oldKey.KeySet().Keys...)}
	mu.Unlock()
	rotated, _ := newKey.Issue(pod, []string{"portcullis"}, time.Hour)
	if _, err := v.Verify(rotated); !errors.Is(err, workloadtoken.ErrSignature) {
		t.Fatalf("a token of a new key verified (or failed otherwise) before MinRefetch passed: %v", err)
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1: refetches are rate-limited", n)
	}
	clk.Step(workloadtoken.DefaultJWKSMinRefetch)
	if _, err := v.Verify(rotated); err != nil {
		t.Fatalf("token of the rotated key: %v", err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("token of the old key, still published: %v", err)
	}
	wrongAud, _ := newKey.Issue(pod, []string{"other"}, time.Hour)
	if _, err := v.Verify(wrongAud); !errors.Is(err, workloadtoken.ErrAudience) {
		t.Fatalf("wrong audience: %v", err)
	}
}

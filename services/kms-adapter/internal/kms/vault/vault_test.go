package vault_test

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/vault"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/vaulttest"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("cluster.local")
	id  = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	pki = vaulttest.PKI{Mount: "pki", Role: "workload", TrustDomain: td}
)

func backendConfig(srv *vaulttest.Server, mode vault.Mode, auth vault.Auth) vault.Config {
	return vault.Config{
		Address: srv.Addr, Mount: pki.Mount, Role: pki.Role, Mode: mode, Auth: auth, TrustDomain: td,
		DefaultTTL: 24 * time.Hour, MaxTTL: 2160 * time.Hour, IntermediateTTL: 8760 * time.Hour,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

func tokenAuth(t *testing.T, srv *vaulttest.Server) vault.Auth {
	return vault.Auth{Method: vault.AuthToken, TokenFile: vaulttest.WriteFile(t, "token", srv.RootToken)}
}

func appRoleAuth(t *testing.T, srv *vaulttest.Server, tokenTTL time.Duration) vault.Auth {
	roleID, secretID := srv.AppRole(pki, "kms-adapter", tokenTTL)
	return vault.Auth{Method: vault.AuthAppRole, RoleID: roleID, SecretFile: vaulttest.WriteFile(t, "secret-id", secretID)}
}

func open(t *testing.T, cfg vault.Config) *vault.Backend {
	t.Helper()
	b, err := vault.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("vault.New: %v", err)
	}
	return b
}

// run runs the backend's background work until the test ends.
func run(t *testing.T, b *vault.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func signOnce(ctx context.Context, t *testing.T, b kms.Backend) error {
	_, err := b.Sign(ctx, kms.SignRequest{CSR: kmstest.CSR(t, kmstest.CSRDER(t, kmstest.NewKey(t))), ID: id, TTL: time.Hour})
	return err
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after 30s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func wantErr(t *testing.T, err error, target error, parts ...string) {
	t.Helper()
	t.Logf("error: %v", err)
	if !errors.Is(err, target) {
		t.Fatalf("err = %v, want %v", err, target)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("err %q does not mention %q", err, p)
		}
	}
}

func TestConformance(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	auth := appRoleAuth(t, srv, time.Hour)
	for _, mode := range []vault.Mode{vault.ModeLeaf, vault.ModeIntermediate} {
		t.Run(string(mode), func(t *testing.T) {
			kmstest.Run(t, func(t *testing.T) kms.Backend {
				b := open(t, backendConfig(srv, mode, auth))
				run(t, b)
				return b
			}, td)
		})
	}
}

func TestAppRoleWrongSecretIDIsRefused(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	auth := appRoleAuth(t, srv, time.Hour)
	auth.SecretFile = vaulttest.WriteFile(t, "wrong-secret-id", "00000000-0000-0000-0000-000000000000")
	_, err := vault.New(t.Context(), backendConfig(srv, vault.ModeLeaf, auth))
	wantErr(t, err, kms.ErrUnavailable, "approle login refused", "auth/approle/login", "status 400", "invalid")
	if strings.Contains(err.Error(), "00000000-0000") {
		t.Errorf("error leaks the secret id: %v", err)
	}
}

func TestVaultErrorsNamePathAndStatus(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)

	t.Run("RoleMissing", func(t *testing.T) {
		cfg := backendConfig(srv, vault.ModeLeaf, tokenAuth(t, srv))
		cfg.Role = "no-such-role"
		err := signOnce(t.Context(), t, open(t, cfg))
		wantErr(t, err, kms.ErrUnavailable, "pki/sign/no-such-role", "status 400", "pki role missing")
	})
	t.Run("PermissionDenied", func(t *testing.T) {
		token, err := srv.Client().Auth().Token().CreateWithContext(t.Context(), &api.TokenCreateRequest{Policies: []string{"default"}})
		if err != nil {
			t.Fatal(err)
		}
		cfg := backendConfig(srv, vault.ModeLeaf, vault.Auth{Method: vault.AuthToken, TokenFile: vaulttest.WriteFile(t, "token", token.Auth.ClientToken)})
		// Reading the issuers is open to all (Vault serves them unauthenticated); signing is not.
		err = signOnce(t.Context(), t, open(t, cfg))
		wantErr(t, err, kms.ErrUnavailable, "pki/sign/workload", "status 403", "permission denied")
	})
	t.Run("MountMissing", func(t *testing.T) {
		cfg := backendConfig(srv, vault.ModeLeaf, tokenAuth(t, srv))
		cfg.Mount = "no-such-pki"
		_, err := vault.New(t.Context(), cfg)
		wantErr(t, err, kms.ErrUnavailable, "no-such-pki/issuers")
	})
	t.Run("Unreachable", func(t *testing.T) {
		cfg := backendConfig(srv, vault.ModeLeaf, tokenAuth(t, srv))
		cfg.Address = "http://127.0.0.1:1"
		_, err := vault.New(t.Context(), cfg)
		wantErr(t, err, kms.ErrUnavailable, "unreachable", "auth/token/lookup-self")
	})
}

func TestSealedThenUnsealed(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	auth := appRoleAuth(t, srv, time.Hour)
	leaf := open(t, backendConfig(srv, vault.ModeLeaf, auth))
	run(t, leaf)
	inter := open(t, backendConfig(srv, vault.ModeIntermediate, auth))
	run(t, inter)
	if err := signOnce(t.Context(), t, leaf); err != nil {
		t.Fatal(err)
	}

	srv.Seal()
	wantErr(t, signOnce(t.Context(), t, leaf), kms.ErrUnavailable, "pki/sign/workload", "status 503", "sealed")
	eventually(t, "leaf-mode trust bundle fails while sealed", func() error {
		if _, err := leaf.TrustBundle(t.Context()); !errors.Is(err, kms.ErrUnavailable) {
			return errors.New("trust bundle still answers")
		}
		return nil
	})
	// The intermediate signs without Vault, and its roots have not changed.
	if err := signOnce(t.Context(), t, inter); err != nil {
		t.Errorf("intermediate mode while sealed: %v", err)
	}
	if _, err := inter.TrustBundle(t.Context()); err != nil {
		t.Errorf("intermediate-mode trust bundle while sealed: %v", err)
	}

	srv.Unseal()
	eventually(t, "signing after unseal", func() error { return signOnce(t.Context(), t, leaf) })
	eventually(t, "trust bundle after unseal", func() error { _, err := leaf.TrustBundle(t.Context()); return err })
}

func TestStoppedThenRestarted(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{Persistent: true})
	srv.ConfigurePKI(pki)
	b := open(t, backendConfig(srv, vault.ModeLeaf, appRoleAuth(t, srv, time.Hour)))
	run(t, b)
	before, err := b.TrustBundle(t.Context())
	if err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	wantErr(t, signOnce(t.Context(), t, b), kms.ErrUnavailable, "pki/sign/workload", "unreachable")

	srv.Restart()
	eventually(t, "signing after restart", func() error { return signOnce(t.Context(), t, b) })
	after, err := b.TrustBundle(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Roots) != 1 || !after.Roots[0].Equal(before.Roots[0]) {
		t.Error("the root changed across a restart of a persistent vault")
	}
}

func TestTokenRenewedThenReplacedByLogin(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	// token_ttl 2s, token_max_ttl 8s: renewed twice or so, then a new login.
	b := open(t, backendConfig(srv, vault.ModeLeaf, appRoleAuth(t, srv, 2*time.Second)))
	first := b.Token()
	run(t, b)
	eventually(t, "a new token from a re-login", func() error {
		if b.Token() == first {
			return errors.New("same token")
		}
		return nil
	})
	if err := signOnce(t.Context(), t, b); err != nil {
		t.Fatalf("signing with the new token: %v", err)
	}
	// The old token reached its max TTL: signing works only because of the new login.
	if _, err := srv.Client().Auth().Token().LookupWithContext(t.Context(), first); err == nil {
		eventually(t, "the first token expires", func() error {
			if _, err := srv.Client().Auth().Token().LookupWithContext(t.Context(), first); err == nil {
				return errors.New("still valid")
			}
			return nil
		})
	}
}

func TestRootRotationShowsBothRoots(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	changed := make(chan kms.Bundle, 10)
	cfg := backendConfig(srv, vault.ModeLeaf, tokenAuth(t, srv))
	cfg.BundleRefresh = 50 * time.Millisecond
	cfg.OnBundleChange = func(b kms.Bundle) { changed <- b }
	b := open(t, cfg)
	run(t, b)

	srv.AddRoot(pki.Mount, "root-2")
	select {
	case bundle := <-changed:
		if len(bundle.Roots) != 2 {
			t.Fatalf("bundle after rotation has %d roots, want the old and the new", len(bundle.Roots))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("OnBundleChange not called after a new root issuer was added")
	}
	// Leaves now come from the new default issuer and verify against the two-root bundle.
	chain, err := b.Sign(t.Context(), kms.SignRequest{CSR: kmstest.CSR(t, kmstest.CSRDER(t, kmstest.NewKey(t))), ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := chain[len(chain)-1].Subject.CommonName; got != "Portcullis test root root-2" {
		t.Errorf("leaf chains to %q, want the new default root", got)
	}
}

func TestIntermediateRenewedAtHalfLife(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	clk := clocktesting.NewFakeClock(time.Now())
	cfg := backendConfig(srv, vault.ModeIntermediate, tokenAuth(t, srv))
	cfg.Clock = clk
	b := open(t, cfg)
	first := b.IntermediateSerial()
	run(t, b)
	eventually(t, "renewal timer armed", func() error {
		if !clk.HasWaiters() {
			return errors.New("no timer")
		}
		return nil
	})
	clk.Step(cfg.IntermediateTTL/2 - time.Hour)
	if b.IntermediateSerial() != first {
		t.Fatal("intermediate renewed before half its life")
	}
	clk.Step(2 * time.Hour)
	eventually(t, "intermediate renewed", func() error {
		if b.IntermediateSerial() == first {
			return errors.New("same intermediate")
		}
		return nil
	})
	// Vault dates the new intermediate by the real clock; bring the fake one back to it, or the
	// new intermediate would look half-spent already.
	clk.SetTime(time.Now())
	if err := signOnce(t.Context(), t, b); err != nil {
		t.Fatal(err)
	}
}

// Kubernetes auth needs a Kubernetes API to review the token (TokenReview), which this test does
// not run; Vault's kubernetes method is pointed at a closed port. What is checked is everything on
// kms-adapter's side: the login reaches auth/kubernetes/login with the role and the JWT read from
// the file (a wrong field name would be a 400 "missing role/jwt"), and the refusal names the path
// and status without the JWT.
func TestKubernetesLoginReachesVault(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	c := srv.Client()
	for _, w := range []struct {
		path string
		data map[string]any
	}{
		{"sys/auth/kubernetes", map[string]any{"type": "kubernetes"}},
		{"auth/kubernetes/config", map[string]any{"kubernetes_host": "http://127.0.0.1:1", "disable_local_ca_jwt": true}},
		{"auth/kubernetes/role/kms-adapter", map[string]any{"bound_service_account_names": "kms-adapter",
			"bound_service_account_namespaces": "portcullis", "token_policies": "default"}},
	} {
		if _, err := c.Logical().WriteWithContext(t.Context(), w.path, w.data); err != nil {
			t.Fatalf("%s: %v", w.path, err)
		}
	}
	enc := base64.RawURLEncoding.EncodeToString
	jwt := enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(`{"iss":"kubernetes/serviceaccount",`+
		`"kubernetes.io/serviceaccount/namespace":"portcullis","kubernetes.io/serviceaccount/service-account.name":"kms-adapter",`+
		`"kubernetes.io/serviceaccount/service-account.uid":"0d4ee2e5-5cbb-4f43-9d2c-6f3c5e0e1a11","sub":"system:serviceaccount:portcullis:kms-adapter"}`)) +
		"." + enc([]byte("not-checked-without-pem-keys"))
	auth := vault.Auth{Method: vault.AuthKubernetes, Role: "kms-adapter", JWTFile: vaulttest.WriteFile(t, "token", jwt)}
	_, err := vault.New(t.Context(), backendConfig(srv, vault.ModeLeaf, auth))
	wantErr(t, err, kms.ErrUnavailable, "kubernetes login refused", "auth/kubernetes/login", "status 403", "credentials refused")
	if strings.Contains(err.Error(), jwt[:20]) {
		t.Errorf("error leaks the service account token: %v", err)
	}

	// The same login against a role that does not exist is a different, equally named refusal.
	auth.Role = "nobody"
	_, err = vault.New(t.Context(), backendConfig(srv, vault.ModeLeaf, auth))
	wantErr(t, err, kms.ErrUnavailable, "auth/kubernetes/login", "nobody")
}

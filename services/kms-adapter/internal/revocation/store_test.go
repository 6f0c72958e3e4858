package revocation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/revocation"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	cart  = spiffeid.RequireFromPath(td, "/ns/shop/sa/cart")
	other = spiffeid.RequireFromPath(td, "/ns/shop/sa/other")
	t0    = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
)

const maxTTL = 24 * time.Hour

// setup is the local CA behind the guard, both on dir, on a fake clock.
func setup(t *testing.T, dir string, clk *clocktesting.FakeClock) (*revocation.Store, kms.Backend) {
	t.Helper()
	store, err := revocation.Open(revocation.Config{Dir: dir, MaxLifetime: maxTTL + local.ClockSkew, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := local.New(local.Config{StateDir: dir, TrustDomain: td, DefaultTTL: time.Hour, MaxTTL: maxTTL,
		RootTTL: 100 * maxTTL, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return store, revocation.Wrap(ca, store)
}

func sign(t *testing.T, b kms.Backend, id spiffeid.ID) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := b.Sign(context.Background(), kms.SignRequest{CSR: csr, ID: id, TTL: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

func revoked(t *testing.T, s *revocation.Store, id spiffeid.ID, c *x509.Certificate) bool {
	t.Helper()
	for _, e := range s.Snapshot().Entries {
		if e.ID == id {
			return e.Revoked(c.NotBefore, c.SerialNumber)
		}
	}
	return false
}

// The certificate signed seconds after a revocation has a NotBefore (backdated a minute by the
// local CA) before the revocation; it must still count as a replacement, not as revoked.
func TestReplacementSignedSecondsAfterARevocationIsNotRevoked(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	store, ca := setup(t, t.TempDir(), clk)
	before := sign(t, ca, cart)
	bystander := sign(t, ca, other)
	clk.Step(5 * time.Second)
	rev, err := store.Revoke(cart)
	if err != nil {
		t.Fatal(err)
	}
	clk.Step(2 * time.Second)
	replacement := sign(t, ca, cart)
	if !replacement.NotBefore.Before(rev.RevokedAt) {
		t.Fatalf("the local CA no longer backdates (NotBefore %s, revoked at %s): this test proves nothing", replacement.NotBefore, rev.RevokedAt)
	}
	clk.Step(40 * time.Second)
	renewed := sign(t, ca, cart) // the replacement's own renewal, still backdated to before the cutoff
	clk.Step(10 * time.Minute)
	later := sign(t, ca, cart) // NotBefore past the cutoff: nothing to record
	for _, tc := range []struct {
		name string
		id   spiffeid.ID
		cert *x509.Certificate
		want bool
	}{
		{"certificate issued before the revocation", cart, before, true},
		{"replacement issued 2s after it", cart, replacement, false},
		{"its renewal", cart, renewed, false},
		{"a certificate issued 10m later", cart, later, false},
		{"another identity's certificate", other, bystander, false},
	} {
		if got := revoked(t, store, tc.id, tc.cert); got != tc.want {
			t.Errorf("%s: revoked = %v, want %v", tc.name, got, tc.want)
		}
	}
	if n := len(store.Snapshot().Entries[0].Reissued); n != 2 {
		t.Errorf("%d serials recorded, want the 2 signed within the cutoff", n)
	}
}

// Revocations survive a restart of kms-adapter: the store on the same directory has them, with
// their recorded replacements, in a file only kms-adapter can read.
func TestRevocationsSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	clk := clocktesting.NewFakeClock(t0)
	store, ca := setup(t, dir, clk)
	before := sign(t, ca, cart)
	clk.Step(time.Second)
	if _, err := store.Revoke(cart); err != nil {
		t.Fatal(err)
	}
	replacement := sign(t, ca, cart)
	version := store.Snapshot().Version

	reopened, _ := setup(t, dir, clk)
	if got := reopened.Snapshot().Version; got != version {
		t.Errorf("version after restart %d, want %d", got, version)
	}
	if !revoked(t, reopened, cart, before) || revoked(t, reopened, cart, replacement) {
		t.Error("after a restart the revocation or its recorded replacement is lost")
	}
	fi, err := os.Stat(filepath.Join(dir, revocation.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", revocation.FileName, fi.Mode().Perm())
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "."+revocation.FileName+".tmp-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}

	// A second revocation revokes the replacements of the first.
	clk.Step(time.Second)
	if _, err := reopened.Revoke(cart); err != nil {
		t.Fatal(err)
	}
	if !revoked(t, reopened, cart, replacement) {
		t.Error("a second revocation did not revoke the first one's replacement")
	}
	if v := reopened.Snapshot().Version; v <= version {
		t.Errorf("version %d did not increase past %d", v, version)
	}
}

// An entry is dropped once every certificate it revokes has expired.
func TestRevocationExpiresWithTheLastCertificateItRevokes(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	store, _ := setup(t, t.TempDir(), clk)
	if _, err := store.Revoke(cart); err != nil {
		t.Fatal(err)
	}
	clk.Step(maxTTL)
	if _, ok := store.Lookup(cart); !ok {
		t.Fatal("revocation dropped while a certificate it revokes may still be valid")
	}
	clk.Step(local.ClockSkew + revocation.SignerClockMargin)
	if _, ok := store.Lookup(cart); ok || len(store.Snapshot().Entries) != 0 {
		t.Fatal("revocation kept after every certificate it revokes expired")
	}
}

// An unreadable state is an error, never an empty state.
func TestCorruptStateIsRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, revocation.FileName), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := revocation.Open(revocation.Config{Dir: dir, MaxLifetime: time.Hour}); err == nil {
		t.Fatal("a corrupt revocation state was accepted")
	}
}

// revokingMidSign revokes id while the wrapped backend signs.
type revokingMidSign struct {
	kms.Backend
	store *revocation.Store
	t     *testing.T
}

func (b revokingMidSign) Sign(ctx context.Context, req kms.SignRequest) ([]*x509.Certificate, error) {
	chain, err := b.Backend.Sign(ctx, req)
	if _, rerr := b.store.Revoke(req.ID); rerr != nil {
		b.t.Fatal(rerr)
	}
	return chain, err
}

// A certificate whose signing was in flight when a revocation came in may have been signed before
// it: it is not recorded, so it counts as revoked.
func TestSignatureInFlightDuringARevocationCountsAsRevoked(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	dir := t.TempDir()
	store, err := revocation.Open(revocation.Config{Dir: dir, MaxLifetime: maxTTL + local.ClockSkew, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := local.New(local.Config{StateDir: dir, TrustDomain: td, DefaultTTL: time.Hour, MaxTTL: maxTTL,
		RootTTL: 100 * maxTTL, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Revoke(cart); err != nil { // an earlier revocation: signing records replacements
		t.Fatal(err)
	}
	clk.Step(time.Second)
	inFlight := sign(t, revocation.Wrap(revokingMidSign{ca, store, t}, store), cart)
	if !revoked(t, store, cart, inFlight) {
		t.Fatal("a certificate signed across a revocation counts as its replacement")
	}
}

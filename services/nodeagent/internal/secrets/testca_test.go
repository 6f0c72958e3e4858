package secrets

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"
)

// testCA is an in-process CA implementing Signer and BundleSource. It really signs the CSR with
// crypto/x509 under an intermediate (chain leaf, intermediate, root), so the Manager's checks of
// key, name and chain run against real certificates. It counts calls and can be told to fail or
// to misbehave. The real citadel (over mTLS, with the KMS behind it) is exercised by the e2e suite.
type testCA struct {
	clk clock.PassiveClock

	mu            sync.Mutex
	root, inter   *x509.Certificate
	interKey      crypto.Signer
	bundle        []*x509.Certificate
	signCalls     int
	bundleCalls   int
	bundleVersion uint64
	tokens        []string
	creds         []Credential
	failWith      error // Sign returns it
	wrongKey      bool  // Sign certifies a fresh key instead of the CSR's
	wrongID       bool  // Sign names another identity than the CSR
	emptyChain    bool  // Sign returns no certificates and no error
	gate          chan struct{}
}

func newTestCA(t testing.TB, clk clock.PassiveClock) *testCA {
	t.Helper()
	ca := &testCA{clk: clk}
	ca.root, ca.inter, ca.interKey = newHierarchy(t, clk.Now(), "test root 1")
	ca.bundle = []*x509.Certificate{ca.root}
	ca.bundleVersion = 1
	return ca
}

// rotate switches signing to a new root and intermediate and publishes the new root next to the
// old one, as a CA does during a rotation overlap.
func (ca *testCA) rotate(t testing.TB) {
	t.Helper()
	root, inter, key := newHierarchy(t, ca.clk.Now(), "test root 2")
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.root, ca.inter, ca.interKey = root, inter, key
	ca.bundle = append(slices.Clone(ca.bundle), root)
	ca.bundleVersion++
}

// retire drops every root but the signing one from the bundle.
func (ca *testCA) retire() {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.bundle = []*x509.Certificate{ca.root}
	ca.bundleVersion++
}

func (ca *testCA) set(f func(ca *testCA)) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	f(ca)
}

func (ca *testCA) signs() int {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.signCalls
}

func (ca *testCA) bundles() int {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.bundleCalls
}

func (ca *testCA) lastToken() string {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.tokens[len(ca.tokens)-1]
}

func (ca *testCA) Sign(ctx context.Context, csrPEM []byte, cred Credential, ttl time.Duration) ([]*x509.Certificate, error) {
	ca.mu.Lock()
	ca.signCalls++
	ca.tokens = append(ca.tokens, cred.Token)
	ca.creds = append(ca.creds, cred)
	gate, failWith, wrongKey, wrongID, empty := ca.gate, ca.failWith, ca.wrongKey, ca.wrongID, ca.emptyChain
	root, inter, interKey := ca.root, ca.inter, ca.interKey
	ca.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if failWith != nil {
		return nil, failWith
	}
	if empty {
		return nil, nil
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.Join(ErrRejected, errors.New("not a PEM certificate request"))
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, errors.Join(ErrRejected, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errors.Join(ErrRejected, err)
	}
	pub, uris := csr.PublicKey, csr.URIs
	if wrongKey {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		pub = other.Public()
	}
	if wrongID {
		uris = []*url.URL{spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/other").URL()}
	}
	now := ca.clk.Now()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial,
		URIs:         uris,
		NotBefore:    now,
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, inter, pub, interKey)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, inter, root}, nil
}

func (ca *testCA) TrustBundle(context.Context) ([]*x509.Certificate, uint64, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.bundleCalls++
	return slices.Clone(ca.bundle), ca.bundleVersion, nil
}

// newHierarchy makes a root and an intermediate valid around now.
func newHierarchy(t testing.TB, now time.Time, name string) (root, inter *x509.Certificate, interKey crypto.Signer) {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	root = createCert(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	ik, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	inter = createCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name + " intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, root, ik.Public(), rootKey)
	return root, inter, ik
}

func createCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// recorder is an Observer that remembers what it was told.
type recorder struct {
	mu      sync.Mutex
	issued  int
	failed  int
	dropped []spiffeid.ID
	bundles int
}

func (r *recorder) Issued(spiffeid.ID, *x509.Certificate, time.Duration) { r.do(func() { r.issued++ }) }
func (r *recorder) IssueFailed(spiffeid.ID, error)                       { r.do(func() { r.failed++ }) }
func (r *recorder) Dropped(id spiffeid.ID)                               { r.do(func() { r.dropped = append(r.dropped, id) }) }
func (r *recorder) BundleChanged([]*x509.Certificate)                    { r.do(func() { r.bundles++ }) }

func (r *recorder) do(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
}

func (r *recorder) snapshot() (issued, failed int, dropped []spiffeid.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.issued, r.failed, slices.Clone(r.dropped)
}

// recordingClock is a FakeClock that remembers the delay of every AfterFunc, so that tests can
// check what the Manager scheduled, not only what happened.
type recordingClock struct {
	*testingclock.FakeClock
	mu     sync.Mutex
	delays []time.Duration
}

// AfterFunc registers the timer before recording it: a test that saw the delay may move the clock
// at once, and the timer must already be there to fire.
func (c *recordingClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	t := c.FakeClock.AfterFunc(d, f)
	c.mu.Lock()
	c.delays = append(c.delays, d)
	c.mu.Unlock()
	return t
}

func (c *recordingClock) scheduled() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.delays)
}

// testStart is a whole second, so that certificates (second precision) start exactly now.
var testStart = time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)

const testTTL = time.Hour

func newRecordingClock() *recordingClock {
	return &recordingClock{FakeClock: testingclock.NewFakeClock(testStart)}
}

func newTestManager(ca *testCA, clk clock.WithDelayedExecution, obs Observer) *Manager {
	return New(Config{
		Signer: ca, Bundles: ca, Clock: clk, Logger: slog.New(slog.DiscardHandler), Observe: obs,
		TTL: testTTL, KeyType: ECDSAP256, Refresh: time.Minute, IssueTimeout: 10 * time.Second,
	})
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func requireNotified(t testing.TB, s *Subscription, why string) {
	t.Helper()
	select {
	case <-s.C:
	case <-time.After(10 * time.Second):
		t.Fatalf("subscriber of %s not notified: %s", s.ID, why)
	}
}

func requireNotNotified(t testing.TB, s *Subscription, why string) {
	t.Helper()
	select {
	case <-s.C:
		t.Fatalf("subscriber of %s notified, but should not be: %s", s.ID, why)
	default:
	}
}

func drain(s *Subscription) {
	select {
	case <-s.C:
	default:
	}
}

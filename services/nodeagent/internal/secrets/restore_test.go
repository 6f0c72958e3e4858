package secrets

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secretstore"
)

var (
	cartPod = secretstore.Pod{Namespace: "shop", Name: "cart-0", UID: "4f0c2a8e-1b7d-4c3e-9a51-0d6f2b8c7e10"}
	webPod  = secretstore.Pod{Namespace: "shop", Name: "web-0", UID: "9d3b7e21-5a4c-4f8e-b2d6-3c1e0f9a8b72"}
	gonePod = secretstore.Pod{Namespace: "shop", Name: "old-0", UID: "c7a1e5f3-2d9b-4e60-8f14-6b3a0c2d9e85"}
)

// onNode is the restarted agent's view of its node: every pod but gonePod.
func onNode(p secretstore.Pod) bool { return p.UID != gonePod.UID }

const testGrace = 10 * time.Minute

// countingStore is the real store, counting writes.
type countingStore struct {
	*secretstore.Store
	mu             sync.Mutex
	saves, deletes int
}

func (s *countingStore) Save(r secretstore.Record) error {
	s.mu.Lock()
	s.saves++
	s.mu.Unlock()
	return s.Store.Save(r)
}

func (s *countingStore) Delete(id spiffeid.ID) error {
	s.mu.Lock()
	s.deletes++
	s.mu.Unlock()
	return s.Store.Delete(id)
}

func (s *countingStore) counts() (saves, deletes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saves, s.deletes
}

func openTestStore(t testing.TB, dir string) *countingStore {
	t.Helper()
	st, err := secretstore.Open(dir, secretstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &countingStore{Store: st}
}

func newStoringManager(ca *testCA, clk clock.WithDelayedExecution, obs Observer, st Store) *Manager {
	return New(Config{
		Signer: ca, Bundles: ca, Clock: clk, Logger: slog.New(slog.DiscardHandler), Observe: obs,
		TTL: testTTL, KeyType: ECDSAP256, Refresh: time.Minute, IssueTimeout: 10 * time.Second,
		Store: st, RestoreGrace: testGrace,
	})
}

// kept returns the records in the store by identity, failing on any unreadable one.
func kept(t testing.TB, st Store) map[spiffeid.ID]secretstore.Record {
	t.Helper()
	recs, errs := st.Load()
	if len(errs) != 0 {
		t.Fatalf("store: %v", errs)
	}
	out := map[spiffeid.ID]secretstore.Record{}
	for _, r := range recs {
		out[r.ID] = r
	}
	return out
}

func keptSerial(t testing.TB, r secretstore.Record) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(r.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Text(16)
}

// The issue's promise: a restarted agent serves every identity it held at once, with no CSR and
// no token.
func TestRestartServesKeptCertificatesWithoutSigning(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	dir := filepath.Join(t.TempDir(), "state")
	before := newStoringManager(ca, clk, &recorder{}, openTestStore(t, dir))
	before.Hold(cartID, cartPod, []string{"default", "ROOTCA"})
	cart, err := before.Certificate(context.Background(), cartID, Credential{Token: "token"})
	if err != nil {
		t.Fatal(err)
	}
	web, err := before.Certificate(context.Background(), webID, Credential{Token: "token"})
	if err != nil {
		t.Fatal(err)
	}
	before.Hold(webID, webPod, []string{"default"}) // after the issuance: written then
	before.close()                                  // the agent is gone (its timers with it)

	clk.Step(10 * time.Minute)
	signs := ca.signs()
	after := newStoringManager(ca, clk, &recorder{}, openTestStore(t, dir))
	res, err := after.Restore(context.Background(), onNode)
	if err != nil {
		t.Fatal(err)
	}
	if res.Restored != 2 || res.Dropped != 0 {
		t.Fatalf("restore: %+v, want 2 restored and none dropped", res)
	}
	for _, was := range []*Certificate{cart, web} {
		// The sidecar is back, identified by its connection: no token.
		pod := &attestedpod.Ref{Namespace: "shop", Name: "cart-0", UID: cartPod.UID}
		if was.ID == webID {
			pod = &attestedpod.Ref{Namespace: "shop", Name: "web-0", UID: webPod.UID}
		}
		got, err := after.Certificate(context.Background(), was.ID, Credential{Pod: pod})
		if err != nil {
			t.Fatal(err)
		}
		if serial(got) != serial(was) || !publicKeysEqual(got.Key.Public(), was.Key.Public()) ||
			string(got.KeyPEM) != string(was.KeyPEM) || string(got.ChainPEM) != string(was.ChainPEM) {
			t.Fatalf("%s after the restart: serial %s, want the same certificate and key as before (%s)", was.ID, serial(got), serial(was))
		}
	}
	if n := ca.signs(); n != signs {
		t.Fatalf("the restarted agent made %d Sign calls, want 0", n-signs)
	}
	if names := after.Names(cartID); !slices.Equal(names, []string{"default", "ROOTCA"}) {
		t.Fatalf("Names(cart) after the restart = %v, want the names asked before it", names)
	}
	held := after.HeldBy(cartPod.UID)
	if len(held) != 1 || held[0].ID != cartID || !slices.Equal(held[0].ResourceNames, []string{"default", "ROOTCA"}) {
		t.Fatalf("HeldBy(cart pod) = %+v, want cart with the names its stream asked for", held)
	}
	if held := after.HeldBy(webPod.UID); len(held) != 1 || held[0].ID != webID {
		t.Fatalf("HeldBy(web pod) = %+v, want web", held)
	}
}

// heldCert is the certificate m holds for id, without asking for it as a caller would.
func heldCert(m *Manager, id spiffeid.ID) *Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[id]; e != nil {
		return e.cert
	}
	return nil
}

// signedRecord has ca sign a fresh key for id, as citadel would, and returns it as the store
// keeps it.
func signedRecord(t testing.TB, ca *testCA, id spiffeid.ID, ttl time.Duration, pods ...secretstore.Pod) secretstore.Record {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := newCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(context.Background(), csr, Credential{Token: "token"}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	rec := secretstore.Record{ID: id, Key: pkcs8, Pods: pods, ResourceNames: []string{"default"}}
	for _, c := range chain {
		rec.Chain = append(rec.Chain, c.Raw)
	}
	return rec
}

func TestRestoreDropsAndDeletesWhatCannotBeServed(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	dir := filepath.Join(t.TempDir(), "state")
	st := openTestStore(t, dir)
	id := func(sa string) spiffeid.ID {
		return spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/" + sa)
	}

	good := signedRecord(t, ca, cartID, testTTL, cartPod, gonePod)
	expired := signedRecord(t, ca, webID, 10*time.Minute, webPod)
	untrusted := signedRecord(t, newTestCA(t, clk), id("orders"), testTTL, cartPod) // another CA's root
	wrongKey := signedRecord(t, ca, id("payments"), testTTL, cartPod)
	wrongKey.Key = signedRecord(t, ca, id("payments"), testTTL, cartPod).Key
	wrongName := signedRecord(t, ca, id("ads"), testTTL, cartPod)
	wrongName.ID = id("admin") // a leaf for ads filed as admin
	podGone := signedRecord(t, ca, id("search"), testTTL, gonePod)
	noPods := signedRecord(t, ca, id("logs"), testTTL)
	for _, r := range []secretstore.Record{good, expired, untrusted, wrongKey, wrongName, podGone, noPods} {
		if err := st.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	sum := sha256.Sum256([]byte("spiffe://cluster.local/ns/shop/sa/torn"))
	if err := os.WriteFile(filepath.Join(dir, hex.EncodeToString(sum[:])+".json"), []byte(`{"version":1,"spi`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("an operator's note"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.Step(20 * time.Minute) // the agent was down: web's certificate expired meanwhile

	signs := ca.signs()
	obs := &recorder{}
	m := newStoringManager(ca, clk, obs, st)
	res, err := m.Restore(context.Background(), onNode)
	if err != nil {
		t.Fatal(err)
	}
	if res.Restored != 1 || res.Dropped != 7 {
		t.Fatalf("restore: %+v, want 1 restored and 7 dropped (6 unusable, 1 torn)", res)
	}
	if n := ca.signs(); n != signs {
		t.Fatalf("restore made %d Sign calls, want 0", n-signs)
	}
	recs, errs := st.Load()
	if len(errs) != 1 || !errors.Is(errs[0], secretstore.ErrUnknownFile) {
		t.Fatalf("store errors after the restore: %v, want only the operator's file, left alone", errs)
	}
	left := map[spiffeid.ID]secretstore.Record{}
	for _, r := range recs {
		left[r.ID] = r
	}
	if len(left) != 1 {
		t.Fatalf("store keeps %d records after the restore, want only the servable one", len(left))
	}
	if r, ok := left[cartID]; !ok || !slices.Equal(r.Pods, []secretstore.Pod{cartPod}) {
		t.Fatalf("kept cart record %+v, want it with the pod that left forgotten", r)
	}
	m.mu.Lock()
	n := len(m.entries)
	m.mu.Unlock()
	if n != 1 {
		t.Fatalf("manager holds %d identities, want 1", n)
	}
}

// A restored certificate came without a token, and the token its sidecar had has long expired:
// its renewal must prove possession of the restored key instead.
func TestRestoredCertificateRenewsWithARenewalProof(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	st := openTestStore(t, filepath.Join(t.TempDir(), "state"))
	if err := st.Save(signedRecord(t, ca, cartID, testTTL, cartPod)); err != nil {
		t.Fatal(err)
	}
	m := newStoringManager(ca, clk, &recorder{}, st)
	if _, err := m.Restore(context.Background(), onNode); err != nil {
		t.Fatal(err)
	}
	// The sidecar is back and watches, but has not asked for its certificate again (MOSN): the
	// agent holds no credential of its.
	sub := m.Subscribe(cartID)
	defer m.Unsubscribe(sub)
	restored := heldCert(m, cartID)
	signs := ca.signs()

	clk.SetTime(at(restored, 0.56))
	requireNotified(t, sub, "renewal of the restored certificate")
	if n := ca.signs(); n != signs+1 {
		t.Fatalf("%d Sign calls for the renewal, want 1", n-signs)
	}
	ca.mu.Lock()
	cred := ca.creds[len(ca.creds)-1]
	roots := slices.Clone(ca.bundle)
	ca.mu.Unlock()
	if cred.Token != "" || cred.Current == nil || serial(cred.Current) != serial(restored) {
		t.Fatalf("renewal sent token %q and current certificate %v, want the restored certificate and no token", cred.Token, cred.Current != nil)
	}
	// What citadel checks: the restored key signs a proof that verifies against the bundle.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := newCSR(key, cartID)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(csrPEM)
	proof, err := renewalproof.New(cred.Current.Chain, cred.Current.Key, block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := renewalproof.Verify(proof, block.Bytes, roots, clk.Now()); err != nil || got != cartID {
		t.Fatalf("renewal proof of the restored key: %s, %v; want it to verify as %s", got, err, cartID)
	}
	renewed := heldCert(m, cartID)
	if serial(renewed) == serial(restored) {
		t.Fatal("the renewed certificate is not served")
	}
	eventually(t, "the renewed certificate to be kept", func() bool {
		r, ok := kept(t, st)[cartID]
		return ok && keptSerial(t, r) == serial(renewed) && slices.Equal(r.Pods, []secretstore.Pod{cartPod})
	})
}

// A restored identity that nobody watches yet must survive its renewal point long enough for its
// sidecars to reconnect; after the grace period it is dropped, and deleted, like any other.
func TestRestoredIdentityWaitsForItsSidecarsThenIsDropped(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	st := openTestStore(t, filepath.Join(t.TempDir(), "state"))
	rec := signedRecord(t, ca, cartID, testTTL, cartPod)
	if err := st.Save(rec); err != nil {
		t.Fatal(err)
	}
	clk.Step(40 * time.Minute) // down past the renewal point (30 min ± 3)
	obs := &recorder{}
	m := newStoringManager(ca, clk, obs, st)
	if _, err := m.Restore(context.Background(), onNode); err != nil {
		t.Fatal(err)
	}
	// Overdue: renewed soon, within a quarter of the 20 minutes left, not all at once.
	d := clk.scheduled()
	if len(d) != 1 || d[0] > 5*time.Minute {
		t.Fatalf("restored overdue certificate scheduled in %v, want one renewal within 5m", d)
	}
	restored := heldCert(m, cartID)
	signs := ca.signs()
	clk.Step(max(d[0], minRenewDelay)) // still within the grace period, nobody watching
	eventually(t, "the renewal of the unwatched restored identity", func() bool { return ca.signs() == signs+1 })
	eventually(t, "the renewed certificate to be kept", func() bool {
		r, ok := kept(t, st)[cartID]
		return ok && keptSerial(t, r) != serial(restored)
	})
	if _, _, dropped := obs.snapshot(); len(dropped) != 0 {
		t.Fatalf("dropped %v within the grace period", dropped)
	}

	renewed := heldCert(m, cartID)
	clk.SetTime(at(renewed, 0.56)) // past the grace period, still nobody watching
	eventually(t, "the identity to be dropped", func() bool { _, _, d := obs.snapshot(); return len(d) == 1 })
	eventually(t, "the dropped identity to be deleted", func() bool { return len(kept(t, st)) == 0 })
	if n := ca.signs(); n != signs+1 {
		t.Fatalf("%d Sign calls after the grace period, want none", n-signs-1)
	}
}

func TestIssuesAreKeptAndDropsDeleted(t *testing.T) {
	clk := newRecordingClock()
	ca := newTestCA(t, clk)
	st := openTestStore(t, filepath.Join(t.TempDir(), "state"))
	obs := &recorder{}
	m := newStoringManager(ca, clk, obs, st)
	sub := m.Subscribe(cartID)
	m.Hold(cartID, cartPod, []string{"default"}) // no certificate yet: nothing to write
	if saves, _ := st.counts(); saves != 0 {
		t.Fatalf("%d saves before any certificate, want 0", saves)
	}
	c, err := m.Certificate(context.Background(), cartID, Credential{Token: "token"})
	if err != nil {
		t.Fatal(err)
	}
	// Written before Certificate returned: a crash after a sidecar got its key loses nothing.
	r, ok := kept(t, st)[cartID]
	if !ok || keptSerial(t, r) != serial(c) || !slices.Equal(r.Pods, []secretstore.Pod{cartPod}) {
		t.Fatalf("after the issuance the store keeps %+v, want serial %s held by the cart pod", r, serial(c))
	}
	if wantKey, _ := pem.Decode(c.KeyPEM); string(r.Key) != string(wantKey.Bytes) {
		t.Fatal("kept key is not the served key")
	}

	m.Hold(cartID, cartPod, []string{"default"}) // a second stream of the same pod
	if saves, _ := st.counts(); saves != 1 {
		t.Fatalf("%d saves after a Hold that adds nothing, want 1", saves)
	}
	m.Remember(cartID, []string{"ROOTCA", "default"}) // as the SDS server remembers names (sds.Remembered)
	if r := kept(t, st)[cartID]; !slices.Equal(r.ResourceNames, []string{"default", "ROOTCA"}) {
		t.Fatalf("kept names %v, want default and ROOTCA", r.ResourceNames)
	}
	if names := m.Names(cartID); !slices.Equal(names, []string{"default", "ROOTCA"}) {
		t.Fatalf("Names = %v, want default and ROOTCA", names)
	}
	if saves, _ := st.counts(); saves != 2 {
		t.Fatalf("%d saves, want 2 (the issuance, one new name)", saves)
	}

	m.Unsubscribe(sub)
	clk.SetTime(at(c, 0.56))
	eventually(t, "the identity to be dropped", func() bool { _, _, d := obs.snapshot(); return len(d) == 1 })
	eventually(t, "the dropped identity to be deleted", func() bool { return len(kept(t, st)) == 0 })
	if _, deletes := st.counts(); deletes != 1 {
		t.Fatalf("%d deletes, want 1", deletes)
	}
}

func TestHeldPodsAndNamesAreBounded(t *testing.T) {
	var h holding
	for i := range maxHeldPods + 10 {
		h.addPod(secretstore.Pod{Namespace: "shop", Name: "cart", UID: string(rune('a' + i))})
		h.addNames([]string{string(rune('A' + i))})
	}
	if len(h.pods) != maxHeldPods || h.pods[0].UID != string(rune('a'+10)) {
		t.Fatalf("%d pods kept, first %q; want the newest %d", len(h.pods), h.pods[0].UID, maxHeldPods)
	}
	if len(h.names) != maxHeldNames {
		t.Fatalf("%d names kept, want at most %d", len(h.names), maxHeldNames)
	}
}

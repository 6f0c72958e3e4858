package local_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
)

// rotationCA is a CA on a fake clock whose observer feeds events.
type rotationCA struct {
	*local.CA
	dir    string
	clk    *clocktesting.FakeClock
	events chan kms.RotationEvent
}

func newRotationCA(t *testing.T) *rotationCA {
	t.Helper()
	rc := &rotationCA{dir: t.TempDir(), clk: clocktesting.NewFakeClock(t0), events: make(chan kms.RotationEvent, 16)}
	rc.CA = newCA(t, rc.config())
	return rc
}

// rotationMaxTTL is short enough (under a sixth of rootTTL) that a previous root retires before
// it expires: activation at ⅚ of its life + rotationMaxTTL.
const rotationMaxTTL = 30 * 24 * time.Hour

func (rc *rotationCA) config() local.Config {
	cfg := config(rc.dir, rc.clk)
	cfg.MaxTTL = rotationMaxTTL
	cfg.Observer = func(ev kms.RotationEvent) { rc.events <- ev }
	return cfg
}

// run starts RunRotation until the test ends.
func (rc *rotationCA) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rc.RunRotation(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunRotation: %v", err)
		}
	})
}

// parked waits until RunRotation waits on the clock, i.e. has taken every step that is due.
func (rc *rotationCA) parked(t *testing.T) {
	t.Helper()
	waitFor(t, "RunRotation to wait on the clock", rc.clk.HasWaiters)
}

// expectNothingBefore moves the clock to just before at and checks that no step was taken.
func (rc *rotationCA) expectNothingBefore(t *testing.T, at time.Time) {
	t.Helper()
	rc.parked(t)
	rc.clk.SetTime(at.Add(-time.Second))
	// A fake timer fires inside SetTime and leaves the waiters: still waiting means not fired.
	if !rc.clk.HasWaiters() {
		t.Fatalf("RunRotation woke before %s", at)
	}
	rc.noEvent(t)
}

func (rc *rotationCA) event(t *testing.T) kms.RotationEvent {
	t.Helper()
	select {
	case ev := <-rc.events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no rotation event")
		return kms.RotationEvent{}
	}
}

func (rc *rotationCA) noEvent(t *testing.T) {
	t.Helper()
	select {
	case ev := <-rc.events:
		t.Fatalf("unexpected rotation event %+v", ev)
	default:
	}
}

func (rc *rotationCA) status(t *testing.T) kms.RotationStatus {
	t.Helper()
	s, err := rc.RotationStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (rc *rotationCA) bundle(t *testing.T) kms.Bundle {
	t.Helper()
	b, err := rc.TrustBundle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestScheduleRotatesTheRoot(t *testing.T) {
	rc := newRotationCA(t)
	oldRoot := rc.status(t).Active.Root
	life := oldRoot.NotAfter.Sub(oldRoot.NotBefore)
	prepareAt, activateAt := oldRoot.NotBefore.Add(life/2), oldRoot.NotBefore.Add(life-life/6)
	checkNext(t, rc.status(t), kms.StepPrepared, prepareAt)
	checkBundle(t, rc.bundle(t), 1, oldRoot)
	rc.run(t)

	rc.expectNothingBefore(t, prepareAt)
	rc.clk.SetTime(prepareAt)
	ev := rc.event(t)
	st := rc.status(t)
	if st.Next == nil || ev.Step != kms.StepPrepared || !ev.Scheduled || ev.BundleVersion != 2 || !ev.Root.Equal(st.Next.Root) {
		t.Fatalf("at ½ life: event %+v, next %+v; want prepared (scheduled, version 2) of the next root", ev, st.Next)
	}
	newRoot := st.Next.Root
	checkBundle(t, rc.bundle(t), 2, oldRoot, newRoot)
	checkNext(t, st, kms.StepActivated, activateAt)
	if !st.Active.Root.Equal(oldRoot) {
		t.Fatal("prepare switched the active root")
	}

	rc.expectNothingBefore(t, activateAt)
	// The last leaf of the old root: signed just before activation, with the longest ttl.
	oldLeaf := signChain(t, rc.CA, rotationMaxTTL)
	checkChainsTo(t, oldLeaf, oldRoot, newRoot, rc.clk.Now())
	verifyWithBundle(t, oldLeaf, rc.bundle(t), rc.clk.Now())
	rc.clk.SetTime(activateAt)
	ev = rc.event(t)
	st = rc.status(t)
	retireAt := activateAt.Add(rotationMaxTTL)
	if ev.Step != kms.StepActivated || !ev.Scheduled || ev.BundleVersion != 2 || !ev.Root.Equal(newRoot) {
		t.Fatalf("at ⅚ life: event %+v, want activated (scheduled, version 2) of the new root", ev)
	}
	if !st.Active.Root.Equal(newRoot) || st.Next != nil || len(st.Previous) != 1 || !st.Previous[0].Root.Equal(oldRoot) ||
		!st.Previous[0].RetireAt.Equal(retireAt) || st.Previous[0].Intermediate != nil {
		t.Fatalf("after activation: status %+v, want new root active, old previous until %s without its signing key", st, retireAt)
	}
	checkBundle(t, rc.bundle(t), 2, newRoot, oldRoot)
	checkNext(t, st, kms.StepRetired, retireAt)
	newLeaf := signChain(t, rc.CA, 0)
	checkChainsTo(t, newLeaf, newRoot, oldRoot, rc.clk.Now())
	// Both generations verify against the bundle during the overlap.
	verifyWithBundle(t, oldLeaf, rc.bundle(t), rc.clk.Now())
	verifyWithBundle(t, newLeaf, rc.bundle(t), rc.clk.Now())
	checkGone(t, filepath.Join(rc.dir, local.RootKeyFile), filepath.Join(rc.dir, local.IntermediateKeyFile))

	rc.expectNothingBefore(t, retireAt)
	if !oldLeaf[0].NotAfter.Before(retireAt) {
		t.Fatalf("the old root's last leaf is valid until %s, past its retirement at %s", oldLeaf[0].NotAfter, retireAt)
	}
	rc.clk.SetTime(retireAt)
	ev = rc.event(t)
	if ev.Step != kms.StepRetired || !ev.Scheduled || ev.BundleVersion != 3 || !ev.Root.Equal(oldRoot) {
		t.Fatalf("at activation + max ttl: event %+v, want retired (scheduled, version 3) of the old root", ev)
	}
	checkBundle(t, rc.bundle(t), 3, newRoot)
	life = newRoot.NotAfter.Sub(newRoot.NotBefore)
	checkNext(t, rc.status(t), kms.StepPrepared, newRoot.NotBefore.Add(life/2))
	checkGone(t, filepath.Join(rc.dir, local.RootCertFile), filepath.Join(rc.dir, local.IntermediateCertFile))
	rc.parked(t)
	rc.noEvent(t)
}

func TestRetireIsCappedAtTheRootsExpiry(t *testing.T) {
	rc := newRotationCA(t)
	root := rc.status(t).Active.Root
	rc.clk.SetTime(root.NotAfter.Add(-rotationMaxTTL / 2))
	mustStep(t, rc.PrepareCA)
	st := mustStep(t, rc.ActivateCA)
	if got := st.Previous[0].RetireAt; !got.Equal(root.NotAfter) {
		t.Errorf("retire at %s, want the root's expiry %s", got, root.NotAfter)
	}
}

func TestOperatorSteps(t *testing.T) {
	ctx := context.Background()
	rc := newRotationCA(t)
	oldRoot := rc.status(t).Active.Root
	for name, step := range map[string]func() (kms.RotationStatus, error){
		"activate with nothing prepared": func() (kms.RotationStatus, error) { return rc.ActivateCA(ctx) },
		"retire with no previous root":   func() (kms.RotationStatus, error) { return rc.RetireCA(ctx, false) },
		"force retire with no previous":  func() (kms.RotationStatus, error) { return rc.RetireCA(ctx, true) },
	} {
		if _, err := step(); !errors.Is(err, kms.ErrRotationState) {
			t.Errorf("%s: err = %v, want ErrRotationState", name, err)
		}
	}
	rc.noEvent(t)

	st := mustStep(t, rc.PrepareCA)
	newRoot := st.Next.Root
	if ev := rc.event(t); ev.Step != kms.StepPrepared || ev.Scheduled || ev.BundleVersion != 2 || !ev.Root.Equal(newRoot) {
		t.Errorf("prepare: event %+v, want prepared (asked for, version 2)", ev)
	}
	checkBundle(t, rc.bundle(t), 2, oldRoot, newRoot)
	if _, err := rc.PrepareCA(ctx); !errors.Is(err, kms.ErrRotationState) || !strings.Contains(err.Error(), "already prepared") {
		t.Errorf("second prepare: err = %v, want ErrRotationState saying a CA is already prepared", err)
	}

	st = mustStep(t, rc.ActivateCA)
	if ev := rc.event(t); ev.Step != kms.StepActivated || ev.Scheduled || !ev.Root.Equal(newRoot) || !st.Active.Root.Equal(newRoot) {
		t.Errorf("activate: event %+v, active %s; want activated of the new root", ev, st.Active.Root.Subject)
	}
	checkChainsTo(t, signChain(t, rc.CA, 0), newRoot, oldRoot, rc.clk.Now())
	_, err := rc.RetireCA(ctx, false)
	if !errors.Is(err, kms.ErrRotationState) || !strings.Contains(err.Error(), st.Previous[0].RetireAt.UTC().Format(time.RFC3339)) {
		t.Errorf("early retire: err = %v, want ErrRotationState naming the retire time", err)
	}

	st = mustStep(t, func(ctx context.Context) (kms.RotationStatus, error) { return rc.RetireCA(ctx, true) })
	if ev := rc.event(t); ev.Step != kms.StepRetired || ev.Scheduled || ev.BundleVersion != 3 || !ev.Root.Equal(oldRoot) {
		t.Errorf("force retire: event %+v, want retired (asked for, version 3) of the old root", ev)
	}
	if len(st.Previous) != 0 || st.BundleVersion != 3 {
		t.Errorf("after retire: status %+v, want no previous roots at version 3", st)
	}
	checkBundle(t, rc.bundle(t), 3, newRoot)
	rc.noEvent(t)
}

func TestRetireWithoutForceDropsOnlyDueRoots(t *testing.T) {
	rc := newRotationCA(t)
	first := rc.status(t).Active.Root
	mustStep(t, rc.PrepareCA)
	second := mustStep(t, rc.ActivateCA).Active.Root
	rc.clk.Step(rotationMaxTTL / 2)
	mustStep(t, rc.PrepareCA)
	st := mustStep(t, rc.ActivateCA)
	if len(st.Previous) != 2 {
		t.Fatalf("%d previous roots, want 2", len(st.Previous))
	}
	third := st.Active.Root
	rc.clk.SetTime(st.Previous[1].RetireAt) // the first root's
	st = mustStep(t, func(ctx context.Context) (kms.RotationStatus, error) { return rc.RetireCA(ctx, false) })
	if len(st.Previous) != 1 || !st.Previous[0].Root.Equal(second) {
		t.Fatalf("retire dropped %d roots, want only the first", 2-len(st.Previous))
	}
	for range 4 {
		<-rc.events // prepare, activate, prepare, activate
	}
	if ev := rc.event(t); !ev.Root.Equal(first) {
		t.Error("the retired event does not name the first root")
	}
	checkBundle(t, rc.bundle(t), 4, third, second)
}

// TestSignDuringRotation runs signers against the lock-free signing path while steps swap the CA
// (run with -race).
func TestSignDuringRotation(t *testing.T) {
	rc := newRotationCA(t)
	req := kms.SignRequest{CSR: kmstest.CSR(t, kmstest.CSRDER(t, kmstest.NewKey(t))), ID: id}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				chain, err := rc.Sign(ctx, req)
				if err != nil || chain[0].CheckSignatureFrom(chain[1]) != nil || chain[1].CheckSignatureFrom(chain[2]) != nil {
					t.Errorf("sign during rotation: %v", err)
					return
				}
			}
		})
	}
	for range 3 {
		mustStep(t, rc.PrepareCA)
		mustStep(t, rc.ActivateCA)
		mustStep(t, func(ctx context.Context) (kms.RotationStatus, error) { return rc.RetireCA(ctx, true) })
	}
	cancel()
	wg.Wait()
}

func TestObserverMayReadTheCA(t *testing.T) {
	rc := &rotationCA{dir: t.TempDir(), clk: clocktesting.NewFakeClock(t0)}
	var got []uint64
	cfg := config(rc.dir, rc.clk)
	cfg.Observer = func(ev kms.RotationEvent) {
		b, err := rc.TrustBundle(context.Background()) // must not deadlock, and must see the step
		if err != nil {
			t.Error(err)
		}
		got = append(got, b.Version)
	}
	rc.CA = newCA(t, cfg)
	mustStep(t, rc.PrepareCA)
	if len(got) != 1 || got[0] != 2 {
		t.Errorf("observer saw bundle versions %v, want [2]", got)
	}
}

func mustStep(t *testing.T, step func(context.Context) (kms.RotationStatus, error)) kms.RotationStatus {
	t.Helper()
	st, err := step(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func checkNext(t *testing.T, st kms.RotationStatus, step kms.RotationStep, at time.Time) {
	t.Helper()
	if st.NextStep != step || !st.NextStepAt.Equal(at) {
		t.Errorf("next step %s at %s, want %s at %s", st.NextStep, st.NextStepAt, step, at)
	}
}

func checkBundle(t *testing.T, b kms.Bundle, version uint64, roots ...*x509.Certificate) {
	t.Helper()
	ok := b.Version == version && len(b.Roots) == len(roots)
	for i := 0; ok && i < len(roots); i++ {
		ok = b.Roots[i].Equal(roots[i])
	}
	if !ok {
		t.Errorf("bundle version %d with %d roots, want version %d with %d roots in order (active, next, previous)",
			b.Version, len(b.Roots), version, len(roots))
	}
}

// checkChainsTo verifies chain against a pool of root alone, and checks that other does not verify it.
func checkChainsTo(t *testing.T, chain []*x509.Certificate, root, other *x509.Certificate, now time.Time) {
	t.Helper()
	if err := verify(chain, []*x509.Certificate{root}, now); err != nil {
		t.Errorf("leaf does not chain to the expected root: %v", err)
	}
	if verify(chain, []*x509.Certificate{other}, now) == nil {
		t.Error("leaf chains to the other root")
	}
}

func verifyWithBundle(t *testing.T, chain []*x509.Certificate, b kms.Bundle, now time.Time) {
	t.Helper()
	if err := verify(chain, b.Roots, now); err != nil {
		t.Errorf("leaf does not verify against the trust bundle: %v", err)
	}
}

func verify(chain, roots []*x509.Certificate, now time.Time) error {
	pool, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inters.AddCert(chain[1])
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func checkGone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists (err %v)", p, err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func sameCert(a, b *x509.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.Raw, b.Raw)
}

// A kms-adapter that was down past ⅚ of the root's life prepares at once on start, but does not
// activate before the new root has had time to reach the agents.
func TestLatePreparationWaitsBeforeActivating(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	dir := t.TempDir()
	newCA(t, config(dir, clk))
	clk.SetTime(t0.Add(rootTTL * 9 / 10)) // well past ⅚
	ca := newCA(t, config(dir, clk))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ca.RunRotation(ctx) }()
	defer func() { cancel(); <-done }()

	waitStatus := func(what string, cond func(kms.RotationStatus) bool) kms.RotationStatus {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, _ := ca.RotationStatus(context.Background())
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	st := waitStatus("the late preparation", func(st kms.RotationStatus) bool { return st.Next != nil })
	if st.NextStep != kms.StepActivated || st.NextStepAt.Sub(clk.Now()) < 9*time.Minute {
		t.Fatalf("next step %s in %s, want activation about 10 minutes after the late preparation", st.NextStep, st.NextStepAt.Sub(clk.Now()))
	}
	clk.Step(11 * time.Minute)
	waitStatus("the activation", func(st kms.RotationStatus) bool { return st.Next == nil && len(st.Previous) == 1 })
}

package e2e

import (
	"context"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// sidecar holds an SDS stream open for a pod of examples/cluster until the test ends.
func sidecar(t testing.TB, s *stack.Stack, key string) *stack.Sidecar {
	t.Helper()
	p := pod(t, key)
	token, err := s.Token(p, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sc, err := stack.OpenSidecar(ctx, s.Socket(p.Node), sdsclient.Credential{Token: token}, "sidecar~"+p.Key())
	if err != nil {
		t.Fatalf("sidecar %s: %v", key, err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc
}

func admin(t testing.TB, s *stack.Stack) kmsv1.KMSAdminServiceClient {
	t.Helper()
	c, conn, err := s.Admin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c
}

func rotate(t testing.TB, c kmsv1.KMSAdminServiceClient, step kmsv1.RotationStep, force bool) *kmsv1.CAStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.RotateCA(ctx, &kmsv1.RotateCARequest{Step: step, Force: force})
	if err != nil {
		t.Fatalf("rotate-ca %s: %v", step, err)
	}
	return st
}

func parseRoot(t testing.TB, info *kmsv1.CAInfo) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(info.GetRoot())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func waitAll(t testing.TB, what string, d time.Duration, cond func(*stack.SVID) bool, scs ...*stack.Sidecar) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for _, sc := range scs {
		if _, err := sc.WaitFor(ctx, cond); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// Two workloads keep handshaking, both ways, with whatever they were last pushed, while the root
// is rotated through prepare, activate and retire: not one handshake may fail, and both end on
// leaves of the new root with only the new root trusted.
func TestRootRotationWithoutAFailedHandshake(t *testing.T) {
	s, _ := startStack(t)
	ctl := admin(t, s)
	a, b := sidecar(t, s, "shop/frontend-0"), sidecar(t, s, "payments/ledger-0")

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, pair := range [][2]*stack.Sidecar{{a, b}, {b, a}} {
				if _, err := stack.Handshake(context.Background(), pair[0].Current(), pair[1].Current()); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}
	}()
	finish := func() {
		close(stop)
		wg.Wait()
	}

	prepared := rotate(t, ctl, kmsv1.RotationStep_ROTATION_STEP_PREPARE, false)
	oldRoot, newRoot := parseRoot(t, prepared.GetActive()), parseRoot(t, prepared.GetNext())
	waitAll(t, "both trust the new root", 30*time.Second, func(v *stack.SVID) bool { return v.Trusts(newRoot) && v.Trusts(oldRoot) }, a, b)

	rotate(t, ctl, kmsv1.RotationStep_ROTATION_STEP_ACTIVATE, false)
	waitAll(t, "both re-issued under the new root", 30*time.Second, func(v *stack.SVID) bool { return v.ChainsTo(newRoot) }, a, b)

	// Retiring now, long before the schedule would, needs force: the old root's leaves could
	// still be in use elsewhere. Here both workloads have moved.
	retired := rotate(t, ctl, kmsv1.RotationStep_ROTATION_STEP_RETIRE, true)
	if len(retired.GetPrevious()) != 0 {
		t.Fatalf("after retire, %d previous roots remain", len(retired.GetPrevious()))
	}
	waitAll(t, "both trust only the new root", 30*time.Second, func(v *stack.SVID) bool {
		return len(v.Roots) == 1 && v.Trusts(newRoot)
	}, a, b)
	for ok.Load() < 200 { // hundreds of handshakes in all, some after the retirement
		time.Sleep(10 * time.Millisecond)
	}
	finish()
	t.Logf("%d handshakes during the rotation, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d of %d handshakes failed during the rotation; first: %v", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
	}
	for _, sc := range []*stack.Sidecar{a, b} {
		if v := sc.Current(); !v.ChainsTo(newRoot) || v.ChainsTo(oldRoot) {
			t.Errorf("%s ended on a leaf that does not chain to the new root only", v.ID)
		}
	}
}

// A forced rotation of one identity reaches every stream of that identity, on every node, and
// no stream of another identity.
func TestForceRotationReachesOnlyThatIdentity(t *testing.T) {
	s, _ := startStack(t)
	ctl := admin(t, s)
	f0, f1 := sidecar(t, s, "shop/frontend-0"), sidecar(t, s, "shop/frontend-1") // same identity, two nodes
	cart, ledger := sidecar(t, s, "shop/cart-0"), sidecar(t, s, "payments/ledger-0")
	before := map[*stack.Sidecar]string{}
	for _, sc := range []*stack.Sidecar{f0, f1, cart, ledger} {
		before[sc] = sc.Current().Leaf().SerialNumber.Text(16)
	}
	otherPushes := cart.Pushes() + ledger.Pushes()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ctl.ForceRotateIdentity(ctx, &kmsv1.ForceRotateIdentityRequest{
		SpiffeId: f0.Current().ID.String(), Reason: "e2e",
	}); err != nil {
		t.Fatal(err)
	}
	for _, sc := range []*stack.Sidecar{f0, f1} {
		waitAll(t, "a new certificate on every frontend stream", 30*time.Second, func(v *stack.SVID) bool {
			return v.Leaf().SerialNumber.Text(16) != before[sc]
		}, sc)
	}
	// The agents spread forced rotations over -rotate-jitter (2s in the stack): anything aimed
	// at the other streams would have arrived by now too.
	time.Sleep(3 * time.Second)
	if n := cart.Pushes() + ledger.Pushes(); n != otherPushes {
		t.Fatalf("streams of other identities were pushed %d times", n-otherPushes)
	}
	if cart.Current().Leaf().SerialNumber.Text(16) != before[cart] || ledger.Current().Leaf().SerialNumber.Text(16) != before[ledger] {
		t.Fatal("another identity's certificate changed")
	}
}

// A revocation replaces the identity's certificate on its streams within seconds.
func TestRevocationReplacesTheCertificateAtOnce(t *testing.T) {
	s, _ := startStack(t)
	ctl := admin(t, s)
	ledger := sidecar(t, s, "payments/ledger-0")
	old := ledger.Current().Leaf()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := ctl.RevokeIdentity(ctx, &kmsv1.RevokeIdentityRequest{SpiffeId: ledger.Current().ID.String(), Reason: "key compromise drill"}); err != nil {
		t.Fatal(err)
	}
	waitAll(t, "the revoked certificate replaced", 10*time.Second, func(v *stack.SVID) bool {
		return v.Leaf().SerialNumber.Cmp(old.SerialNumber) != 0
	}, ledger)
	t.Logf("revoked certificate replaced on the stream after %s", time.Since(start).Round(time.Millisecond))
}

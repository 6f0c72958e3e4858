package local

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
)

// Log keys of rotation steps, beside the only code that logs them.
const (
	logStep          = "step"
	logScheduled     = "scheduled"
	logBundleVersion = "bundle_version"
	logNextStepAt    = "next_step_at"
	logRetryIn       = "retry_in"
)

// retryAfter is how long RunRotation waits after a step failed (a full disk, say) before it tries
// again; the CA keeps signing with what it has meanwhile.
const retryAfter = time.Minute

// maxStepsPerWake bounds the steps one wake-up takes. Catching up after downtime needs at most
// renew, retire, prepare, activate; more means the schedule does not advance, which is a bug that
// must not spin a core.
const maxStepsPerWake = 8

// RotationStatus implements kms.Rotator.
func (ca *CA) RotationStatus(context.Context) (kms.RotationStatus, error) {
	return status(ca.current.Load()), nil
}

// PrepareCA implements kms.Rotator.
func (ca *CA) PrepareCA(context.Context) (kms.RotationStatus, error) {
	return ca.operatorStep(func() error { return ca.prepare(false) })
}

// ActivateCA implements kms.Rotator.
func (ca *CA) ActivateCA(context.Context) (kms.RotationStatus, error) {
	return ca.operatorStep(func() error { return ca.activate(false) })
}

// RetireCA implements kms.Rotator.
func (ca *CA) RetireCA(_ context.Context, force bool) (kms.RotationStatus, error) {
	return ca.operatorStep(func() error { return ca.retire(force, false) })
}

func (ca *CA) operatorStep(step func() error) (kms.RotationStatus, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if err := step(); err != nil {
		return kms.RotationStatus{}, err
	}
	return status(ca.current.Load()), nil
}

// RunRotation implements kms.Rotator. It also renews the active intermediate when a full MaxTTL
// leaf no longer fits in it (only intermediates from before rotation existed are that short). It
// returns nil when ctx ends: stopping is not a failure. A failed step is logged and retried.
func (ca *CA) RunRotation(ctx context.Context) error {
	for {
		timer := ca.cfg.Clock.NewTimer(ca.takeDueSteps())
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C():
		}
	}
}

// takeDueSteps takes every step whose time has come and returns how long to wait for the next.
func (ca *CA) takeDueSteps() time.Duration {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	for range maxStepsPerWake {
		now := ca.cfg.Clock.Now()
		st := ca.current.Load()
		renew := renewAt(st.active, ca.cfg.MaxTTL)
		step, at := schedule(st)
		var err error
		switch {
		case !renew.IsZero() && !now.Before(renew):
			err = ca.renewActive(now)
		case !now.Before(at):
			switch step {
			case kms.StepPrepared:
				err = ca.prepare(true)
			case kms.StepActivated:
				err = ca.activate(true)
			case kms.StepRetired:
				err = ca.retire(false, true)
			}
		default:
			ca.cfg.Logger.Debug("ca rotation waiting", logStep, step, logNextStepAt, at)
			if !renew.IsZero() {
				at = minTime(at, renew)
			}
			return at.Sub(now)
		}
		if err != nil {
			ca.cfg.Logger.Error("ca rotation step failed; retrying", logStep, step, logkey.Err, err,
				logRetryIn, retryAfter.String())
			return retryAfter
		}
	}
	ca.cfg.Logger.Error("ca rotation schedule does not advance; retrying", logRetryIn, retryAfter.String())
	return retryAfter
}

// activationLead is the least time between preparing a CA and the schedule activating it: the
// bundle event needs a moment to reach every agent (seconds) and citadel.
const activationLead = 10 * time.Minute

// schedule returns the step the schedule takes next for st and when: prepare at ½ of the active
// root's life, activate at ⅚, and retire a previous root at its retire time, whichever is first.
func schedule(st *state) (kms.RotationStep, time.Time) {
	root := st.active.root
	life := root.NotAfter.Sub(root.NotBefore)
	step, at := kms.StepPrepared, root.NotBefore.Add(life/2)
	if st.next != nil {
		step, at = kms.StepActivated, root.NotBefore.Add(life-life/6)
		// A CA prepared late (kms-adapter was down past ⅚) still waits before it signs, so that
		// agents hold its root before any leaf chains to it.
		if earliest := st.next.root.NotBefore.Add(ClockSkew + min(activationLead, life/12)); at.Before(earliest) {
			at = earliest
		}
	}
	for _, p := range st.previous {
		if p.retireAt.Before(at) {
			step, at = kms.StepRetired, p.retireAt
		}
	}
	return step, at
}

func status(st *state) kms.RotationStatus {
	s := kms.RotationStatus{BundleVersion: st.version, Active: caInfo(st.active)}
	if st.next != nil {
		next := caInfo(st.next)
		s.Next = &next
	}
	for _, p := range st.previous {
		s.Previous = append(s.Previous, caInfo(p))
	}
	s.NextStep, s.NextStepAt = schedule(st)
	return s
}

func caInfo(a *authority) kms.CAInfo {
	return kms.CAInfo{Root: a.root, Intermediate: a.intermediate, RetireAt: a.retireAt}
}

// The steps below run with ca.mu held. Each persists the new state before swapping it in, and
// reports it only once it is in effect.

// prepare makes the next CA: its directory is written completely before the manifest names it,
// so a crash in between leaves the previous state, plus a directory that loading removes.
func (ca *CA) prepare(scheduled bool) error {
	st := ca.current.Load()
	if st.next != nil {
		return fmt.Errorf("%w: next CA (root %s) is already prepared; activate it first", kms.ErrRotationState, fingerprint(st.next.root))
	}
	dir := ca.cfg.StateDir
	if !st.manifest {
		// Name the flat CA first, so that the directory written next is never mistaken for
		// damage (a manifest-less state with CA directories is refused) if the step stops half way.
		if err := writeManifest(dir, st); err != nil {
			return err
		}
		named := *st
		named.manifest = true
		st = &named
		ca.current.Store(st)
	}
	now := ca.cfg.Clock.Now()
	next, files, err := generateCA(ca.cfg, now)
	if err != nil {
		return err
	}
	next.dir = newCADirName(dir, now)
	if err := writeCADir(dir, next.dir, files); err != nil {
		return err
	}
	// On failure the directory stays: if the rename made it to disk the manifest names it, and if
	// not, loading removes it.
	nst := &state{version: st.version + 1, active: st.active, next: next, previous: st.previous, manifest: true}
	if err := writeManifest(dir, nst); err != nil {
		return err
	}
	ca.current.Store(nst)
	ca.report(nst, scheduled, kms.StepPrepared, next.root)
	return nil
}

// activate switches signing to the next CA. The old active root stays trusted until every leaf it
// may have signed has expired (MaxTTL from now, capped at the root's expiry); its keys are deleted
// as soon as the manifest no longer names it as a signer.
func (ca *CA) activate(scheduled bool) error {
	st := ca.current.Load()
	if st.next == nil {
		return fmt.Errorf("%w: no next CA is prepared; prepare one first", kms.ErrRotationState)
	}
	old := st.active
	retireAt := minTime(ca.cfg.Clock.Now().Add(ca.cfg.MaxTTL), old.root.NotAfter)
	previous := append([]*authority{{dir: old.dir, root: old.root, retireAt: retireAt}}, st.previous...)
	nst := &state{version: st.version, active: st.next, previous: previous, manifest: true}
	if err := writeManifest(ca.cfg.StateDir, nst); err != nil {
		return err
	}
	ca.current.Store(nst)
	if err := removeKeys(ca.cfg.StateDir, old.dir); err != nil {
		// Loading removes them too; the step itself has happened.
		ca.cfg.Logger.Error("removing keys of the CA that stopped signing", logkey.RootFingerprint, fingerprint(old.root), logkey.Err, err)
	}
	ca.report(nst, scheduled, kms.StepActivated, nst.active.root)
	return nil
}

// retire drops previous roots whose retire time has come (all with force) and deletes their CAs.
func (ca *CA) retire(force, scheduled bool) error {
	st := ca.current.Load()
	if len(st.previous) == 0 {
		return fmt.Errorf("%w: there is no previous root to retire", kms.ErrRotationState)
	}
	now := ca.cfg.Clock.Now()
	var keep, drop []*authority
	for _, p := range st.previous {
		if force || !now.Before(p.retireAt) {
			drop = append(drop, p)
		} else {
			keep = append(keep, p)
		}
	}
	if len(drop) == 0 {
		first := keep[0].retireAt
		for _, p := range keep {
			first = minTime(first, p.retireAt)
		}
		return fmt.Errorf("%w: no previous root is due for retirement before %s (leaves it signed may still be valid); force retires it now",
			kms.ErrRotationState, first.UTC().Format(time.RFC3339))
	}
	nst := &state{version: st.version + 1, active: st.active, next: st.next, previous: keep, manifest: true}
	if err := writeManifest(ca.cfg.StateDir, nst); err != nil {
		return err
	}
	roots := make([]*x509.Certificate, len(drop))
	for i, p := range drop {
		roots[i] = p.root
	}
	ca.current.Store(nst)
	for _, p := range drop {
		if err := removeCA(ca.cfg.StateDir, p.dir); err != nil {
			// Loading removes it too; the step itself has happened.
			ca.cfg.Logger.Error("removing a retired CA", logkey.RootFingerprint, fingerprint(p.root), logkey.Err, err)
		}
	}
	ca.report(nst, scheduled, kms.StepRetired, roots...)
	return nil
}

// renewActive issues a new intermediate for the active CA. The roots do not change, so the bundle
// version stays and no event is sent.
func (ca *CA) renewActive(now time.Time) error {
	st := ca.current.Load()
	renewed, err := renewIntermediate(ca.cfg, st.active, now)
	if err != nil {
		return err
	}
	nst := *st
	nst.active = renewed
	ca.current.Store(&nst)
	return nil
}

// report logs a step that is persisted and in effect (its keys deleted where it deletes any), and
// tells the observer, once per root it concerns.
func (ca *CA) report(nst *state, scheduled bool, step kms.RotationStep, roots ...*x509.Certificate) {
	for _, root := range roots {
		ca.cfg.Logger.Info("ca rotation step", logStep, step, logScheduled, scheduled, logBundleVersion, nst.version,
			logkey.RootFingerprint, fingerprint(root), logkey.RootNotAfter, root.NotAfter)
		if ca.cfg.Observer != nil {
			ca.cfg.Observer(kms.RotationEvent{Step: step, Root: root, BundleVersion: nst.version, Scheduled: scheduled})
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

package jwtkeys

import (
	"context"
	"fmt"
	"time"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// Log keys, beside the only code that logs them.
const (
	logKeyID         = "jwt_key_id"
	logAlgorithm     = "algorithm"
	logStep          = "step"
	logScheduled     = "scheduled"
	logBundleVersion = "bundle_version"
	logRetryIn       = "retry_in"
	logErr           = "err"
)

// retryAfter is how long Run waits after a failed step (a full disk, say); the active key keeps
// signing meanwhile.
const retryAfter = time.Minute

// maxStepsPerWake bounds the steps one wake-up takes (catching up after downtime needs at most
// retire, prepare, activate); more means the schedule does not advance, which must not spin.
const maxStepsPerWake = 8

// activationLead is the least time between preparing a key and the schedule activating it: the
// bundle event and citadel's refetch must put the key in every verifier's bundle first.
const activationLead = 10 * time.Minute

// KeyInfo describes one key.
type KeyInfo struct {
	ID          string
	State       string
	Algorithm   string
	CreatedAt   time.Time
	UsableUntil time.Time // retiring keys
}

// Status is the rotation state.
type Status struct {
	Keys          []KeyInfo // active, prepared, retiring
	BundleVersion uint64
	NextStep      kms.RotationStep
	NextStepAt    time.Time
}

// Status reports the keys and the schedule's next step.
func (m *Manager) Status() Status {
	st := m.current.Load()
	s := Status{BundleVersion: st.version}
	for _, k := range st.all() {
		s.Keys = append(s.Keys, KeyInfo{ID: k.id, State: k.state, Algorithm: string(k.alg), CreatedAt: k.createdAt, UsableUntil: k.usableUntil})
	}
	s.NextStep, s.NextStepAt = m.schedule(st)
	return s
}

// Prepare makes a key and publishes it; kms.ErrRotationState if one is already prepared.
func (m *Manager) Prepare(context.Context) (Status, error) {
	return m.operatorStep(func() error { return m.prepare(false) })
}

// Activate signs with the prepared key from now on; the active key becomes retiring.
// kms.ErrRotationState if none is prepared.
func (m *Manager) Activate(context.Context) (Status, error) {
	return m.operatorStep(func() error { return m.activate(false) })
}

// Retire drops retiring keys whose tokens have all expired; with force, every retiring key (its
// unexpired tokens stop verifying). kms.ErrRotationState if there is nothing to drop.
func (m *Manager) Retire(_ context.Context, force bool) (Status, error) {
	return m.operatorStep(func() error { return m.retire(force, false) })
}

func (m *Manager) operatorStep(step func() error) (Status, error) {
	m.mu.Lock()
	err := step()
	m.mu.Unlock()
	if err != nil {
		return Status{}, err
	}
	return m.Status(), nil
}

// Run takes the scheduled steps as their time comes until ctx ends (nil: stopping is no failure).
// A failed step is logged and retried.
func (m *Manager) Run(ctx context.Context) error {
	for {
		timer := m.cfg.Clock.NewTimer(m.takeDueSteps())
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C():
		}
	}
}

func (m *Manager) takeDueSteps() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	for range maxStepsPerWake {
		now := m.cfg.Clock.Now()
		step, at := m.schedule(m.current.Load())
		if now.Before(at) {
			return at.Sub(now)
		}
		var err error
		switch step {
		case kms.StepPrepared:
			err = m.prepare(true)
		case kms.StepActivated:
			err = m.activate(true)
		case kms.StepRetired:
			err = m.retire(false, true)
		}
		if err != nil {
			m.cfg.Logger.Error("jwt key rotation step failed; retrying", logStep, step, logErr, err, logRetryIn, retryAfter.String())
			return retryAfter
		}
	}
	m.cfg.Logger.Error("jwt key rotation schedule does not advance; retrying", logRetryIn, retryAfter.String())
	return retryAfter
}

// schedule returns the next step and when: prepare at ½ of the active key's KeyTTL, activate at
// ⅚ (never sooner than activationLead after preparing), retire a key when its tokens have expired.
func (m *Manager) schedule(st *state) (kms.RotationStep, time.Time) {
	ttl := m.cfg.KeyTTL
	step, at := kms.StepPrepared, st.active.activatedAt.Add(ttl/2)
	if st.prepared != nil {
		step, at = kms.StepActivated, st.active.activatedAt.Add(ttl-ttl/6)
		if earliest := st.prepared.createdAt.Add(min(activationLead, ttl/12)); at.Before(earliest) {
			at = earliest
		}
	}
	for _, k := range st.retiring {
		if k.usableUntil.Before(at) {
			step, at = kms.StepRetired, k.usableUntil
		}
	}
	return step, at
}

// The steps run with m.mu held; each stores the new state before it takes effect.

func (m *Manager) prepare(scheduled bool) error {
	st := m.current.Load()
	if st.prepared != nil {
		return fmt.Errorf("%w: jwt key %s is already prepared; activate it first", kms.ErrRotationState, st.prepared.id)
	}
	k, err := generateKey(m.cfg.Algorithm, m.cfg.Clock.Now())
	if err != nil {
		return err
	}
	return m.commit(&state{version: st.version + 1, active: st.active, prepared: k, retiring: st.retiring},
		scheduled, kms.StepPrepared, k.id)
}

func (m *Manager) activate(scheduled bool) error {
	st := m.current.Load()
	if st.prepared == nil {
		return fmt.Errorf("%w: no jwt key is prepared; prepare one first", kms.ErrRotationState)
	}
	now := m.cfg.Clock.Now()
	old := st.active.with(StateRetiring)
	old.usableUntil = now.Add(m.cfg.MaxTokenTTL + ClockSkew)
	next := st.prepared.with(StateActive)
	next.activatedAt = now
	return m.commit(&state{version: st.version + 1, active: next, retiring: append([]*key{old}, st.retiring...)},
		scheduled, kms.StepActivated, next.id)
}

func (m *Manager) retire(force, scheduled bool) error {
	st := m.current.Load()
	if len(st.retiring) == 0 {
		return fmt.Errorf("%w: there is no retiring jwt key", kms.ErrRotationState)
	}
	now := m.cfg.Clock.Now()
	var keep []*key
	var dropped []string
	first := time.Time{}
	for _, k := range st.retiring {
		if force || !now.Before(k.usableUntil) {
			dropped = append(dropped, k.id)
			continue
		}
		keep = append(keep, k)
		if first.IsZero() || k.usableUntil.Before(first) {
			first = k.usableUntil
		}
	}
	if len(dropped) == 0 {
		return fmt.Errorf("%w: tokens signed by the retiring jwt keys may be valid until %s; force retires them now",
			kms.ErrRotationState, first.UTC().Format(time.RFC3339))
	}
	return m.commit(&state{version: st.version + 1, active: st.active, prepared: st.prepared, retiring: keep},
		scheduled, kms.StepRetired, dropped...)
}

func (m *Manager) commit(nst *state, scheduled bool, step kms.RotationStep, ids ...string) error {
	if err := store(m.cfg.Dir, nst); err != nil {
		return err
	}
	m.current.Store(nst)
	m.cfg.Logger.Info("jwt key rotation step", logStep, step, logScheduled, scheduled, logBundleVersion, nst.version, logKeyID, ids)
	if m.cfg.Observer != nil {
		m.cfg.Observer(Event{Step: step, KeyIDs: ids, BundleVersion: nst.version, Scheduled: scheduled})
	}
	return nil
}

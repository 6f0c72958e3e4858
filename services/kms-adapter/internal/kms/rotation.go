package kms

import (
	"context"
	"crypto/x509"
	"errors"
	"time"
)

// ErrRotationState: the rotation step asked for does not apply to the CA's current state (activate
// with nothing prepared, prepare twice, retire a root whose leaves may still be in use without
// force). The message says what the state is.
var ErrRotationState = errors.New("ca rotation step not possible now")

// Rotator is implemented by backends whose CA kms-adapter rotates itself (the local CA). Rotation
// follows SPIRE's schedule: the next CA is prepared at ½ of the active root's life and its root
// joins the trust bundle at once; signing switches to it at ⅚ of the life (⅙ left); the previous
// root leaves the bundle once no leaf it signed can still be valid (activation + the longest
// leaf TTL, capped at the root's own expiry). Each step may also be asked for by an operator.
//
// Implementations are safe for concurrent use. Every step is persisted before it returns, so a
// restart resumes in the same state, and every step that changes the trust bundle increments
// RotationStatus.BundleVersion (also reported in Bundle.Version).
type Rotator interface {
	RotationStatus(ctx context.Context) (RotationStatus, error)
	// PrepareCA makes the next CA and adds its root to the bundle; ErrRotationState if one is
	// already prepared.
	PrepareCA(ctx context.Context) (RotationStatus, error)
	// ActivateCA switches signing to the prepared CA; the active one becomes previous (still in
	// the bundle). ErrRotationState if none is prepared.
	ActivateCA(ctx context.Context) (RotationStatus, error)
	// RetireCA drops previous roots whose retire time has come; with force, every previous root
	// at once (leaves they signed stop verifying: agents must have moved to the new root).
	// ErrRotationState if there is nothing to retire.
	RetireCA(ctx context.Context, force bool) (RotationStatus, error)
	// RunRotation takes the scheduled steps as their time comes until ctx ends, reporting each
	// step (scheduled or asked for) to the observer given at construction.
	RunRotation(ctx context.Context) error
}

// RotationStep names a step of a CA rotation.
type RotationStep string

// The steps, in order.
const (
	StepPrepared  RotationStep = "prepared"
	StepActivated RotationStep = "activated"
	StepRetired   RotationStep = "retired"
)

// RotationEvent reports one step taken: the root it concerns (the new root for prepared and
// activated, the dropped root for retired) and the bundle version after it.
type RotationEvent struct {
	Step          RotationStep
	Root          *x509.Certificate
	BundleVersion uint64
	Scheduled     bool // taken by the schedule rather than asked for
}

// RotationObserver is told about every step after it is persisted. It must not block for long
// (publishing is queued by the caller).
type RotationObserver func(RotationEvent)

// CAInfo describes one CA of a rotation.
type CAInfo struct {
	Root         *x509.Certificate
	Intermediate *x509.Certificate // nil for a previous CA whose signing key is no longer kept
	RetireAt     time.Time         // previous CAs only: when the schedule drops the root
}

// RotationStatus is the CA's rotation state.
type RotationStatus struct {
	BundleVersion uint64
	Active        CAInfo
	Next          *CAInfo  // prepared, not yet signing
	Previous      []CAInfo // no longer signing, still trusted
	// NextStep and NextStepAt tell what the schedule will do next, and when.
	NextStep   RotationStep
	NextStepAt time.Time
}

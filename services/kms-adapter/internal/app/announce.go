package app

import (
	"crypto/sha256"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/jwtkeys"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// announcer turns what the CA does into events. The backend is built (and may take a rotation
// step at start) before the publisher exists, so events wait here until it does.
type announcer struct {
	td spiffeid.TrustDomain

	mu      sync.Mutex
	pub     publisher
	waiting []*eventsv1.Event
}

type publisher interface {
	Publish(e *eventsv1.Event) uint64
}

// discard is the publisher when events are disabled.
type discard struct{}

func (discard) Publish(*eventsv1.Event) uint64 { return 0 }

func (a *announcer) start(p publisher) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pub = p
	for _, e := range a.waiting {
		p.Publish(e)
	}
	a.waiting = nil
}

// Publish queues e and returns its sequence (0 until the publisher runs).
func (a *announcer) Publish(e *eventsv1.Event) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pub == nil {
		a.waiting = append(a.waiting, e)
		return 0
	}
	return a.pub.Publish(e)
}

// rotation is the CA's kms.RotationObserver: every step is announced, and the steps that change
// the set of roots are followed by a bundle event (the one agents act on for ROOTCA).
func (a *announcer) rotation(ev kms.RotationEvent) {
	step := map[kms.RotationStep]eventsv1.CARotation_Step{
		kms.StepPrepared: eventsv1.CARotation_STEP_PREPARED, kms.StepActivated: eventsv1.CARotation_STEP_ACTIVATED,
		kms.StepRetired: eventsv1.CARotation_STEP_RETIRED,
	}[ev.Step]
	var fp []byte
	if ev.Root != nil {
		sum := sha256.Sum256(ev.Root.Raw)
		fp = sum[:]
	}
	a.Publish(&eventsv1.Event{Kind: &eventsv1.Event_CaRotation{CaRotation: &eventsv1.CARotation{
		Step: step, RootSha256: fp, BundleVersion: ev.BundleVersion, Scheduled: ev.Scheduled,
	}}})
	if ev.Step != kms.StepActivated {
		a.Publish(&eventsv1.Event{Kind: &eventsv1.Event_TrustBundleChanged{TrustBundleChanged: &eventsv1.TrustBundleChanged{
			BundleVersion: ev.BundleVersion,
		}}})
	}
}

// bundle announces a changed set of roots from a backend that rotates its CA elsewhere (Vault's
// issuers).
func (a *announcer) bundle(b kms.Bundle) {
	var fps [][]byte
	for _, r := range b.Roots {
		sum := sha256.Sum256(r.Raw)
		fps = append(fps, sum[:])
	}
	a.Publish(&eventsv1.Event{Kind: &eventsv1.Event_TrustBundleChanged{TrustBundleChanged: &eventsv1.TrustBundleChanged{
		BundleVersion: b.Version, RootSha256: fps,
	}}})
}

// jwtBundle is the JWT keys' observer: every step changes the JWT bundle (or which key signs) and
// is announced so that citadel refetches the bundle and agents theirs.
func (a *announcer) jwtBundle(ev jwtkeys.Event) {
	a.Publish(&eventsv1.Event{Kind: &eventsv1.Event_JwtBundleChanged{JwtBundleChanged: &eventsv1.JWTBundleChanged{
		BundleVersion: ev.BundleVersion,
	}}})
}

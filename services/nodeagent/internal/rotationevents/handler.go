// Package rotationevents is how the node agent acts on kms-adapter's rotation events. An event is
// a hint: the agent refetches the bundle or re-issues over mTLS through citadel and pushes what it
// gets; nothing in an event reaches a sidecar. Work that reaches citadel is spread with jitter so
// a fleet does not arrive at once; a revocation is acted on at once.
package rotationevents

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/events"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
)

// Secrets is the part of the certificate manager events act on (secrets.Manager).
type Secrets interface {
	RefreshBundle(ctx context.Context, kind string, want uint64, retryDelay time.Duration) error
	Rotate(id spiffeid.ID, kind string, within time.Duration) bool
	RotateAll(kind string, within time.Duration) int
	RenewIfSerial(id spiffeid.ID, serial string) bool
}

// JWTBundles is the agent's JWT bundle (workloadapi.JWTBundles).
type JWTBundles interface {
	// RefreshTo refetches until the bundle is at least version want.
	RefreshTo(ctx context.Context, want uint64, attempts int, retryDelay time.Duration) error
}

// Handler acts on events. Handle never blocks on the network.
type Handler struct {
	Secrets Secrets
	// JWTBundles, if set, is refetched on JWTBundleChanged.
	JWTBundles JWTBundles
	Logger     *slog.Logger
	// BundleJitter spreads bundle refetches; RotateJitter spreads re-issues after a CA
	// activation or a forced rotation.
	BundleJitter time.Duration
	RotateJitter time.Duration
}

// Handle implements the events.SubscriberConfig Handle contract.
func (h *Handler) Handle(ctx context.Context, e *eventsv1.Event) {
	kind := events.Kind(e)
	switch k := e.GetKind().(type) {
	case *eventsv1.Event_TrustBundleChanged:
		go h.refresh(ctx, kind, k.TrustBundleChanged.GetBundleVersion())
	case *eventsv1.Event_JwtBundleChanged:
		if h.JWTBundles != nil {
			go h.refreshJWT(ctx, k.JwtBundleChanged.GetBundleVersion())
		}
	case *eventsv1.Event_CaRotation:
		if k.CaRotation.GetStep() == eventsv1.CARotation_STEP_ACTIVATED {
			n := h.Secrets.RotateAll(kind, h.RotateJitter)
			h.Logger.Info("ca activated: re-issuing every certificate under the new CA", "certificates", n, "within", h.RotateJitter)
		}
	case *eventsv1.Event_IdentityRotation:
		h.rotate(kind, k.IdentityRotation.GetSpiffeId(), h.RotateJitter)
	case *eventsv1.Event_IdentityRevocation:
		h.rotate(kind, k.IdentityRevocation.GetSpiffeId(), 0)
	case *eventsv1.Event_CertificateExpiring:
		if id, err := spiffeid.FromString(k.CertificateExpiring.GetSpiffeId()); err == nil &&
			h.Secrets.RenewIfSerial(id, k.CertificateExpiring.GetSerial()) {
			h.Logger.Warn("a certificate this agent serves is close to expiry; renewing now", "spiffe_id", id.String())
		}
	}
}

func (h *Handler) rotate(kind, raw string, within time.Duration) {
	id, err := spiffeid.FromString(raw)
	if err != nil {
		h.Logger.Warn("ignoring an event with a bad spiffe id", "kind", kind, "spiffe_id", raw, "err", err)
		return
	}
	if h.Secrets.Rotate(id, kind, within) {
		h.Logger.Info("re-issuing a certificate on request", "kind", kind, "spiffe_id", id.String(), "within", within)
	}
}

func (h *Handler) refresh(ctx context.Context, kind string, version uint64) {
	if !h.spread(ctx) {
		return
	}
	if err := h.Secrets.RefreshBundle(ctx, kind, version, 200*time.Millisecond); err != nil && ctx.Err() == nil {
		h.Logger.Warn("refetching the trust bundle after an event failed; the periodic refresh continues", "want_version", version, "err", err)
	}
}

func (h *Handler) refreshJWT(ctx context.Context, version uint64) {
	if !h.spread(ctx) {
		return
	}
	if err := h.JWTBundles.RefreshTo(ctx, version, 5, 200*time.Millisecond); err != nil && ctx.Err() == nil {
		h.Logger.Warn("refetching the jwt bundle after an event failed; the periodic refresh continues", "want_version", version, "err", err)
	}
}

// spread waits a random part of BundleJitter, so that a fleet does not refetch at once; false if
// ctx ended first.
func (h *Handler) spread(ctx context.Context) bool {
	if h.BundleJitter <= 0 {
		return true
	}
	t := time.NewTimer(rand.N(h.BundleJitter))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

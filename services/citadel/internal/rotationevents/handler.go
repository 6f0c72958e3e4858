// Package rotationevents is how citadel acts on kms-adapter's rotation events: it drops cached
// certificates that must not be handed out again and refetches the trust bundle, the JWT bundle
// or the revocation state. Events are hints:
// nothing in one is served; the worst a forged event can do is cost a refetch or a re-signing.
package rotationevents

import (
	"context"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/events"

	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/jwtbundle"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/trustbundle"
)

// Cache is the part of the issuer that events act on.
type Cache interface {
	Forget(id spiffeid.ID) int
	ForgetAll() int
}

// Revocations is kms-adapter's revocation state (*revocations.Source).
type Revocations interface {
	Refresh(ctx context.Context) error
}

// Bundles is the trust bundle source.
type Bundles interface {
	Refresh(ctx context.Context) (*trustbundle.Bundle, error)
}

// JWTBundles is the JWT bundle source (*jwtbundle.Source).
type JWTBundles interface {
	Refresh(ctx context.Context) (*jwtbundle.Bundle, error)
}

// Handler acts on events. Handle never blocks on the network.
type Handler struct {
	Cache       Cache
	Bundles     Bundles
	Revocations Revocations
	// JWTBundles is refetched on JWTBundleChanged; nil ignores those events.
	JWTBundles JWTBundles
	Logger     *slog.Logger
	// RetryDelay is the first pause before refetching a bundle older than the event announced
	// (kms-adapter may answer before the change is visible to every reader); 0 means 200ms.
	RetryDelay time.Duration
}

// Handle implements the events.SubscriberConfig Handle contract.
func (h *Handler) Handle(ctx context.Context, e *eventsv1.Event) {
	switch k := e.GetKind().(type) {
	case *eventsv1.Event_TrustBundleChanged:
		go h.refresh(ctx, k.TrustBundleChanged.GetBundleVersion())
	case *eventsv1.Event_JwtBundleChanged:
		if h.JWTBundles != nil {
			go h.refetch(ctx, "jwt bundle", k.JwtBundleChanged.GetBundleVersion(), func(ctx context.Context) (uint64, error) {
				b, err := h.JWTBundles.Refresh(ctx)
				if err != nil {
					return 0, err
				}
				return b.Version, nil
			})
		}
	case *eventsv1.Event_CaRotation:
		if k.CaRotation.GetStep() == eventsv1.CARotation_STEP_ACTIVATED {
			n := h.Cache.ForgetAll()
			h.Logger.Info("ca activated: dropped every cached certificate", "dropped", n)
		}
		go h.refresh(ctx, k.CaRotation.GetBundleVersion())
	case *eventsv1.Event_IdentityRotation:
		h.forget(k.IdentityRotation.GetSpiffeId(), "identity force-rotated")
	case *eventsv1.Event_IdentityRevocation:
		// Nothing in the payload is used (a forged revoked_before must change nothing): the event
		// only makes citadel fetch the state from kms-adapter over mTLS, which drops the cached
		// certificates of every newly revoked identity.
		go h.refreshRevocations(ctx)
	}
}

func (h *Handler) refreshRevocations(ctx context.Context) {
	if err := h.Revocations.Refresh(ctx); err != nil && ctx.Err() == nil {
		h.Logger.Warn("fetching the revocation state after a revocation event failed; the periodic refresh continues", "err", err)
	}
}

func (h *Handler) forget(raw, why string) {
	id, err := spiffeid.FromString(raw)
	if err != nil {
		h.Logger.Warn("ignoring an event with a bad spiffe id", "spiffe_id", raw, "err", err)
		return
	}
	n := h.Cache.Forget(id)
	h.Logger.Info(why+": dropped its cached certificates", "spiffe_id", id.String(), "dropped", n)
}

// refresh refetches the trust bundle until it is at least version want, a few times at most.
func (h *Handler) refresh(ctx context.Context, want uint64) {
	h.refetch(ctx, "trust bundle", want, func(ctx context.Context) (uint64, error) {
		b, err := h.Bundles.Refresh(ctx)
		if err != nil {
			return 0, err
		}
		return b.Version, nil
	})
}

// refetch fetches what until it is at least version want, a few times at most.
func (h *Handler) refetch(ctx context.Context, what string, want uint64, fetch func(context.Context) (uint64, error)) {
	delay := h.RetryDelay
	if delay == 0 {
		delay = 200 * time.Millisecond
	}
	err := events.UntilVersion(ctx, clock.RealClock{}, want, delay, fetch)
	if err != nil && ctx.Err() == nil {
		h.Logger.Warn(what+" did not reach the version an event announced; the periodic refresh continues",
			"want_version", want, "err", err)
	}
}

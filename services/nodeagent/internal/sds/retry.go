package sds

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// retry calls f until it succeeds, fails for good (secrets.ErrRejected), or ctx ends. A sidecar
// that asks while citadel is unreachable keeps its stream open and is answered when citadel is
// back, as Envoy expects; a refusal is returned at once.
func retry[T any](ctx context.Context, logger *slog.Logger, f func() (T, error)) (T, error) {
	delay := 200 * time.Millisecond
	for {
		v, err := f()
		if err == nil || errors.Is(err, secrets.ErrRejected) || ctx.Err() != nil {
			return v, err
		}
		logger.Warn("secret not available yet; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return v, context.Cause(ctx)
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

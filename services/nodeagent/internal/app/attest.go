package app

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/attestclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/config"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/metrics"
)

// loadIdentity reads the agent's control-plane certificate from its files, or returns nil when it
// is obtained by node attestation (see obtainIdentity).
func loadIdentity(cfg config.Config) (*servicetls.Identity, error) {
	if cfg.Attest.Enabled() {
		return nil, nil
	}
	id, err := servicetls.Load(cfg.TLS)
	if err != nil {
		return nil, err
	}
	if node, ok := servicetls.NodeOf(id.ID()); !ok || node != cfg.NodeName {
		return nil, fmt.Errorf("certificate %s is not the node agent certificate of node %q", id.ID(), cfg.NodeName)
	}
	return id, nil
}

// obtainIdentity attests the node when -attest-addr is set: it retries with backoff until
// citadel issues the certificate (the agent is not ready meanwhile), then keeps renewing it in g.
// The key lives only in memory; every mTLS client of the agent (citadel, mcp-sync, NATS) takes
// the current certificate at its next handshake, so renewals need no reconnect.
func (a *App) obtainIdentity(ctx context.Context, g *errgroup.Group) error {
	if a.id != nil {
		return nil
	}
	client, err := attestclient.New(attestclient.Config{Addr: a.cfg.Attest.Addr, TokenFile: a.cfg.Attest.TokenFile,
		CAFile: a.cfg.TLS.CAFile, NodeName: a.cfg.NodeName, Logger: a.logger, Observe: metrics.NewAttest(a.reg)})
	if err != nil {
		return err
	}
	first, err := client.First(ctx)
	if err != nil {
		_ = client.Close()
		return err // context.Canceled when stopped while attesting: a clean stop
	}
	rotating, err := servicetls.NewRotating(first, a.cfg.TLS.CAFile)
	if err != nil {
		_ = client.Close()
		return err
	}
	a.id = rotating.Identity()
	g.Go(func() error {
		defer client.Close()
		return client.Run(ctx, rotating)
	})
	return nil
}

// readiness is the agent's readiness check, replaced once the agent has an identity and runs.
type readiness struct{ current atomic.Pointer[func() error] }

func (r *readiness) set(f func() error) { r.current.Store(&f) }

func (r *readiness) check() error {
	if f := r.current.Load(); f != nil {
		return (*f)()
	}
	return errors.New("starting: no control-plane certificate yet (with -attest-addr: node attestation in progress)")
}

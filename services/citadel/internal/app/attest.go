package app

import (
	"context"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/credentials"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/attest"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// serveAttest starts node attestation on its own TLS listener when -attest-listen is set. It has
// its own token verifier: same issuer and keys as workload tokens, but only the attest audience.
func (a *App) serveAttest(ctx context.Context, g *errgroup.Group) error {
	cfg := a.cfg.Attest
	if !cfg.Enabled() {
		return nil
	}
	ca, err := attest.LoadCAFiles(a.id.TrustDomain(), cfg.CACert, cfg.CAKey)
	if err != nil {
		return err
	}
	verifier, refreshKeys, err := a.cfg.TokenKeys.NewVerifier(a.cfg.TokenIssuer, []string{cfg.Audience}, nil, a.logger)
	if err != nil {
		return err
	}
	attestor, err := attest.New(attest.Config{
		TrustDomain: a.id.TrustDomain(), ServiceAccount: cfg.ServiceAccount,
		Verifier: verifier, Pods: a.pods, CA: ca, TTL: cfg.TTL,
	})
	if err != nil {
		return err
	}
	lis, err := lifecycle.Listen(a.logger, "attest", cfg.Listen)
	if err != nil {
		return err
	}
	srv := attest.NewGRPCServer(credentials.NewTLS(a.id.ServerTLSWithoutClientAuth()),
		attest.NewServer(attestor, a.logger, metrics.NewAttest(a.reg)))
	g.Go(func() error { return refreshKeys(ctx) })
	g.Go(func() error { return lifecycle.ServeGRPC(ctx, srv, lis) })
	return nil
}

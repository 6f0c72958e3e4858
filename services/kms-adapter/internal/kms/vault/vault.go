package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/sync/errgroup"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

const (
	// bundleFreshFor is how long TrustBundle answers from the last read of the issuers: /readyz
	// probes and citadel refreshes then cost Vault at most one read per this interval.
	bundleFreshFor = 5 * time.Second
	// requestTimeout bounds one HTTP call to Vault, retries included.
	requestTimeout = 10 * time.Second
	// Vault's client retries 5xx and connection errors itself; these keep a sealed or stopped
	// Vault from holding a signing request for longer than a few seconds.
	clientRetries  = 2
	clientMinRetry = 100 * time.Millisecond
	clientMaxRetry = time.Second
	// maxIdleConns keeps connections to Vault open under concurrent signing instead of
	// re-dialling (the client's default keeps GOMAXPROCS+1).
	maxIdleConns = 256
)

// Backend is the Vault backend. It implements kms.Backend, kms.SigningChainer and kms.Runner.
type Backend struct {
	cfg    Config
	client *api.Client
	auth   *authenticator
	first  *api.Secret // the login done by New, handed to the authenticator's Run
	logger *slog.Logger
	clock  clock.WithTicker

	up atomic.Bool // the last call to Vault succeeded; transitions are logged once

	bundleMu      sync.Mutex
	roots         []*x509.Certificate
	rootsRead     time.Time
	leafIssuerEnd time.Time  // leaf mode: NotAfter of the issuer that signed the last leaf
	changeMu      sync.Mutex // serialises OnBundleChange calls

	inter atomic.Pointer[authority] // intermediate mode: the CA that signs leaves
}

var (
	_ kms.Backend        = (*Backend)(nil)
	_ kms.Runner         = (*Backend)(nil)
	_ kms.SigningChainer = (*Backend)(nil)
)

// New logs in to Vault, reads the issuers and, in intermediate mode, obtains a first intermediate.
// It fails when Vault cannot be used now, so that a misconfiguration stops kms-adapter at start
// with the path and status that is wrong.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("vault backend: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BundleRefresh <= 0 {
		cfg.BundleRefresh = time.Minute
	}
	client, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger.With("vault_addr", cfg.Address, "vault_mount", cfg.Mount, "vault_mode", string(cfg.Mode))
	b := &Backend{cfg: cfg, client: client, logger: logger, clock: cfg.Clock}
	b.up.Store(true)
	b.auth = newAuthenticator(client, cfg.Auth, cfg.Clock, logger)
	if b.first, err = b.auth.login(ctx); err != nil {
		return nil, err
	}
	if _, err := b.TrustBundle(ctx); err != nil {
		return nil, err
	}
	switch cfg.Mode {
	case ModeLeaf:
		b.checkRole(ctx)
		// The role's issuer is learned from each signature; until then the mount's default one
		// bounds the first leaves.
		if chain, err := b.readIssuer(ctx, "default"); err == nil {
			b.setIssuerNotAfter(chain[0].NotAfter)
		}
	case ModeIntermediate:
		if err := b.renewIntermediate(ctx); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func newClient(cfg Config) (*api.Client, error) {
	vc := api.DefaultConfig()
	if vc.Error != nil {
		return nil, fmt.Errorf("vault client defaults: %w", vc.Error)
	}
	vc.Address = cfg.Address
	vc.Timeout = requestTimeout
	vc.MaxRetries = clientRetries
	vc.MinRetryWait = clientMinRetry
	vc.MaxRetryWait = clientMaxRetry
	if t, ok := vc.HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConnsPerHost = maxIdleConns
	}
	if cfg.CAFile != "" {
		if err := vc.ConfigureTLS(&api.TLSConfig{CACert: cfg.CAFile}); err != nil {
			return nil, fmt.Errorf("vault tls ca %s: %w", cfg.CAFile, err)
		}
	}
	if t, ok := vc.HttpClient.Transport.(*http.Transport); ok && t.TLSClientConfig != nil {
		t.TLSClientConfig.MinVersion = tls.VersionTLS12
	}
	client, err := api.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	// Never pick up a token from the environment or ~/.vault-token behind the configured auth.
	client.ClearToken()
	return client, nil
}

// Run keeps the token alive, re-reads the issuers every BundleRefresh (calling OnBundleChange on
// a change) and, in intermediate mode, renews the intermediate at half its life. Vault outages
// are logged and retried; Run only returns when ctx ends.
func (b *Backend) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return b.auth.Run(ctx, b.first) })
	g.Go(func() error { return b.refreshBundle(ctx) })
	if b.cfg.Mode == ModeIntermediate {
		g.Go(func() error { return b.keepIntermediate(ctx) })
	}
	return g.Wait()
}

// Sign implements kms.Backend.
func (b *Backend) Sign(ctx context.Context, req kms.SignRequest) ([]*x509.Certificate, error) {
	if err := kms.CheckIdentity(req.ID, b.cfg.TrustDomain); err != nil {
		return nil, err
	}
	if err := kms.CheckCSR(req.CSR); err != nil {
		return nil, err
	}
	ttl := req.TTL
	if ttl <= 0 {
		ttl = b.cfg.DefaultTTL
	}
	ttl = min(ttl, b.cfg.MaxTTL)
	if b.cfg.Mode == ModeIntermediate {
		return b.signLocally(req, ttl)
	}
	return b.signWithVault(ctx, req, ttl)
}

// SigningChain implements kms.SigningChainer: in intermediate mode the Vault-signed intermediate
// and its issuers; in leaf mode the mount's default issuer and its chain, which signs unless the
// role names another issuer (the chains Sign returns always name the real one).
func (b *Backend) SigningChain(ctx context.Context) ([]*x509.Certificate, error) {
	if b.cfg.Mode == ModeIntermediate {
		return b.signingChain(), nil
	}
	return b.readIssuer(ctx, "default")
}

// TrustBundle implements kms.Backend. It reads the issuers from Vault at most every
// bundleFreshFor. When Vault cannot be read, leaf mode fails (nothing can be signed, and /readyz
// says so); intermediate mode keeps answering with the last roots while its intermediate is valid,
// because it still signs.
func (b *Backend) TrustBundle(ctx context.Context) (kms.Bundle, error) {
	b.bundleMu.Lock()
	roots, read := b.roots, b.rootsRead
	b.bundleMu.Unlock()
	if roots != nil && b.clock.Since(read) < bundleFreshFor {
		return b.bundle(roots), nil
	}
	fresh, err := b.fetchRoots(ctx)
	if err != nil {
		if roots != nil && b.cfg.Mode == ModeIntermediate && b.intermediateValid() {
			return b.bundle(roots), nil
		}
		return kms.Bundle{}, err
	}
	b.storeRoots(fresh)
	return b.bundle(fresh), nil
}

func (b *Backend) bundle(roots []*x509.Certificate) kms.Bundle {
	return kms.Bundle{TrustDomain: b.cfg.TrustDomain, Roots: append([]*x509.Certificate(nil), roots...)}
}

// storeRoots holds fresh roots and reports a change to OnBundleChange.
func (b *Backend) storeRoots(fresh []*x509.Certificate) {
	b.changeMu.Lock()
	defer b.changeMu.Unlock()
	b.bundleMu.Lock()
	old := b.roots
	b.roots, b.rootsRead = fresh, b.clock.Now()
	b.bundleMu.Unlock()
	if old != nil && !sameRoots(old, fresh) {
		b.logger.Info("vault trust bundle changed", "roots", len(fresh), "previous_roots", len(old))
		if b.cfg.OnBundleChange != nil {
			b.cfg.OnBundleChange(b.bundle(fresh))
		}
	}
}

func (b *Backend) refreshBundle(ctx context.Context) error {
	ticker := b.clock.NewTicker(b.cfg.BundleRefresh)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
		if roots, err := b.fetchRoots(ctx); err == nil {
			b.storeRoots(roots)
		}
	}
}

// fail classifies an error of a call to Vault, logs the first failure of an outage, and asks
// for a new login on a 403 (the token may have been revoked or expired: a lost lease).
func (b *Backend) fail(op, path string, err error) error {
	err = classify(op, path, err)
	if isPermission(err) {
		b.auth.lost()
	}
	if errors.Is(err, kms.ErrUnavailable) && b.up.CompareAndSwap(true, false) {
		b.logger.Warn("vault unavailable", "err", err)
	}
	return err
}

// ok records a successful call, logging the end of an outage.
func (b *Backend) ok() {
	if b.up.CompareAndSwap(false, true) {
		b.logger.Info("vault available again")
	}
}

package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"k8s.io/utils/clock"
)

// Backoff bounds for logins and intermediate renewals that fail.
const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 30 * time.Second
	// minReloginInterval stops a policy that denies a path (403 on every call) from turning each
	// call into a login: a login forced by a 403 happens at most this often.
	minReloginInterval = 5 * time.Second
)

// authenticator logs in to Vault and keeps the client's token alive: it renews a renewable token
// before its TTL runs out (api.LifetimeWatcher renews at about two thirds of the lease), logs in
// again when renewal stops (max TTL reached, token revoked) or when a call sees a 403, and
// retries failed logins with backoff. It never logs a token, secret ID or JWT.
type authenticator struct {
	client  *api.Client
	cfg     Auth
	clock   clock.Clock
	logger  *slog.Logger
	relogin chan struct{} // capacity 1: a pending request to log in again
}

func newAuthenticator(client *api.Client, cfg Auth, clk clock.Clock, logger *slog.Logger) *authenticator {
	if cfg.Mount == "" {
		cfg.Mount = string(cfg.Method)
	}
	return &authenticator{client: client, cfg: cfg, clock: clk, logger: logger, relogin: make(chan struct{}, 1)}
}

// lost asks Run to log in again; it never blocks.
func (a *authenticator) lost() {
	select {
	case a.relogin <- struct{}{}:
	default:
	}
}

// login authenticates once and sets the client's token. The returned secret describes the token's
// lease (nil Auth fields mean a token that never expires).
func (a *authenticator) login(ctx context.Context) (*api.Secret, error) {
	var (
		path   string
		data   map[string]any
		secret *api.Secret
	)
	switch a.cfg.Method {
	case AuthToken:
		token, err := a.readToken()
		if err != nil {
			return nil, err
		}
		a.client.SetToken(token)
		self, err := a.client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return nil, classify("token lookup", "auth/token/lookup-self", err)
		}
		return tokenSecret(token, self)
	case AuthAppRole:
		secretID, err := readSecretFile("approle secret id", a.cfg.SecretFile)
		if err != nil {
			return nil, err
		}
		path, data = "auth/"+a.cfg.Mount+"/login", map[string]any{"role_id": a.cfg.RoleID, "secret_id": secretID}
	case AuthKubernetes:
		jwt, err := readSecretFile("kubernetes service account token", a.cfg.JWTFile)
		if err != nil {
			return nil, err
		}
		path, data = "auth/"+a.cfg.Mount+"/login", map[string]any{"role": a.cfg.Role, "jwt": jwt}
	default:
		return nil, fmt.Errorf("vault auth method %q is not supported", a.cfg.Method)
	}
	// Log in without the old token: a revoked one would get the login itself refused.
	anon, err := a.client.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault login: %w", err)
	}
	anon.ClearToken()
	secret, err = anon.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		return nil, fmt.Errorf("vault %s login refused: %w", a.cfg.Method, classify("write", path, err))
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return nil, fmt.Errorf("vault %s login at %s returned no token", a.cfg.Method, path)
	}
	a.client.SetToken(secret.Auth.ClientToken)
	return secret, nil
}

func (a *authenticator) readToken() (string, error) {
	if a.cfg.TokenFile != "" {
		return readSecretFile("vault token", a.cfg.TokenFile)
	}
	if token := strings.TrimSpace(os.Getenv(api.EnvVaultToken)); token != "" {
		return token, nil
	}
	return "", fmt.Errorf("vault token auth: no token file given and %s is not set", api.EnvVaultToken)
}

// readSecretFile reads a one-line secret; the error names the file, never its content.
func readSecretFile(what, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("reading %s: %s is empty", what, path)
	}
	return s, nil
}

// tokenSecret describes a static token's lease from lookup-self, in the shape the
// LifetimeWatcher renews.
func tokenSecret(token string, self *api.Secret) (*api.Secret, error) {
	auth := &api.SecretAuth{ClientToken: token}
	if self != nil {
		if ttl, ok := self.Data["ttl"].(json.Number); ok {
			secs, err := ttl.Int64()
			if err != nil {
				return nil, fmt.Errorf("vault token lookup: ttl %q: %w", ttl, err)
			}
			auth.LeaseDuration = int(secs)
		}
		auth.Renewable, _ = self.Data["renewable"].(bool)
	}
	return &api.Secret{Auth: auth}, nil
}

// Run keeps the token valid until ctx ends. first is the secret of the login done by New.
func (a *authenticator) Run(ctx context.Context, first *api.Secret) error {
	secret, loggedIn := first, a.clock.Now()
	for {
		forced := a.hold(ctx, secret)
		if ctx.Err() != nil {
			return nil
		}
		// A 403 on every call (a policy that denies a path) must not turn each call into a login.
		if wait := minReloginInterval - a.clock.Since(loggedIn); forced && wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-a.clock.After(wait):
			}
		}
		if secret = a.loginWithBackoff(ctx); secret == nil {
			return nil
		}
		loggedIn = a.clock.Now()
	}
}

// hold returns when the token needs replacing: renewal ended, a non-renewable token reached two
// thirds of its TTL, a call saw a 403 (forced), or ctx ended.
func (a *authenticator) hold(ctx context.Context, secret *api.Secret) (forced bool) {
	var expiring <-chan time.Time
	if secret.Auth.LeaseDuration > 0 {
		if secret.Auth.Renewable {
			watcher, err := a.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: secret})
			if err == nil {
				go watcher.Start()
				defer watcher.Stop()
				for {
					select {
					case <-ctx.Done():
						return false
					case <-a.relogin:
						a.logger.Warn("vault denied a request; logging in again")
						return true
					case err := <-watcher.DoneCh():
						a.logger.Info("vault token renewal ended; logging in again", "err", errString(err))
						return false
					case <-watcher.RenewCh():
						a.logger.Debug("vault token renewed")
					}
				}
			}
			a.logger.Warn("vault token renewal not possible", "err", err)
		}
		expiring = a.clock.After(time.Duration(secret.Auth.LeaseDuration) * time.Second * 2 / 3)
	}
	select {
	case <-ctx.Done():
		return false
	case <-a.relogin:
		a.logger.Warn("vault denied a request; logging in again")
		return true
	case <-expiring:
		a.logger.Info("vault token near its end of life; logging in again")
		return false
	}
}

// loginWithBackoff logs in until it succeeds or ctx ends (nil).
func (a *authenticator) loginWithBackoff(ctx context.Context) *api.Secret {
	for wait := minBackoff; ; wait = min(2*wait, maxBackoff) {
		secret, err := a.login(ctx)
		if err == nil {
			a.logger.Info("vault login succeeded", "auth", string(a.cfg.Method))
			return secret
		}
		if ctx.Err() != nil {
			return nil
		}
		a.logger.Error("vault login failed; retrying", "auth", string(a.cfg.Method), "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-a.clock.After(wait):
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	if errors.Is(err, context.Canceled) {
		return "cancelled"
	}
	return err.Error()
}

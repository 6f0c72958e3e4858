package workloadtoken

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"k8s.io/utils/clock"
)

// Defaults for JWKSConfig.
const (
	DefaultJWKSRefresh    = 5 * time.Minute
	DefaultJWKSMinRefetch = 10 * time.Second
)

// JWKSConfig configures a RemoteVerifier.
type JWKSConfig struct {
	// URL serves the issuer's keys as a JWKS document: for Kubernetes, the API server's
	// /openid/v1/jwks (https://kubernetes.default.svc/openid/v1/jwks in a pod).
	URL string
	// CAFile verifies the server's certificate; empty means the system roots.
	CAFile string
	// BearerTokenFile is sent as "Authorization: Bearer"; it is read again on every fetch,
	// because projected service-account tokens rotate. Empty sends none.
	BearerTokenFile string
	Issuer          string
	Audiences       []string
	Clock           clock.PassiveClock // nil means the real clock
	Logger          *slog.Logger
	// Refresh is the period of the background refetch (0: DefaultJWKSRefresh). MinRefetch
	// limits refetches triggered by tokens signed with an unknown key (0: DefaultJWKSMinRefetch),
	// so that garbage tokens cannot make the verifier hammer the API server.
	Refresh    time.Duration
	MinRefetch time.Duration
}

// RemoteVerifier verifies tokens locally against the keys the issuer publishes, fetched over
// HTTPS and kept fresh: every Refresh, and at once (at most every MinRefetch) when a token's
// signature does not verify with the keys held, which is how a new signing key is picked up
// before the next refresh. Verification needs no round trip to the issuer. It is safe for
// concurrent use.
type RemoteVerifier struct {
	cfg    JWKSConfig
	client *http.Client

	fetchMu sync.Mutex // one fetch at a time
	mu      sync.RWMutex
	current *Verifier
	fetched time.Time
	// tried is the last fetch Verify started, successful or not (rate limit).
	tried time.Time
}

// NewRemoteVerifier checks cfg; it fetches nothing yet.
func NewRemoteVerifier(cfg JWKSConfig) (*RemoteVerifier, error) {
	if cfg.URL == "" || !strings.HasPrefix(cfg.URL, "https://") {
		return nil, fmt.Errorf("token keys url %q: an https url is required", cfg.URL)
	}
	if cfg.Issuer == "" || len(cfg.Audiences) == 0 {
		return nil, errors.New("token verifier: issuer and at least one audience are required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("token verifier: logger is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultJWKSRefresh
	}
	if cfg.MinRefetch <= 0 {
		cfg.MinRefetch = DefaultJWKSMinRefetch
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading token keys ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("token keys ca %s: no certificates", cfg.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	return &RemoteVerifier{cfg: cfg, client: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsConfig, Proxy: http.ProxyFromEnvironment},
	}}, nil
}

// Run refetches the keys every Refresh until ctx ends. A failed fetch keeps the keys held.
func (r *RemoteVerifier) Run(ctx context.Context) error {
	for {
		if err := r.Fetch(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.Warn("fetching workload token keys, keeping the ones held", "url", r.cfg.URL, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.cfg.Refresh):
		}
	}
}

// Fetch gets the keys now.
func (r *RemoteVerifier) Fetch(ctx context.Context) error {
	r.fetchMu.Lock()
	defer r.fetchMu.Unlock()
	keys, err := r.get(ctx)
	if err != nil {
		return err
	}
	v, err := NewVerifier(VerifierConfig{Issuer: r.cfg.Issuer, Audiences: r.cfg.Audiences, Keys: keys, Clock: r.cfg.Clock})
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.current, r.fetched = v, r.cfg.Clock.Now()
	r.mu.Unlock()
	return nil
}

func (r *RemoteVerifier) get(ctx context.Context) (jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.cfg.URL, nil)
	if err != nil {
		return set, err
	}
	if r.cfg.BearerTokenFile != "" {
		tok, err := os.ReadFile(r.cfg.BearerTokenFile)
		if err != nil {
			return set, fmt.Errorf("reading bearer token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return set, fmt.Errorf("fetching token keys: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return set, fmt.Errorf("reading token keys: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return set, fmt.Errorf("fetching token keys from %s: %s", r.cfg.URL, resp.Status)
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return set, fmt.Errorf("parsing token keys from %s: %w", r.cfg.URL, err)
	}
	if len(set.Keys) == 0 {
		return set, fmt.Errorf("token keys from %s: no keys", r.cfg.URL)
	}
	return set, nil
}

// Verify implements TokenVerifier. Before the first successful fetch it fetches; a signature that
// does not verify triggers one refetch (rate-limited) and a second try.
func (r *RemoteVerifier) Verify(raw string) (Workload, error) {
	r.mu.RLock()
	v := r.current
	r.mu.RUnlock()
	if v == nil {
		if err := r.fetchNow(); err != nil {
			return Workload{}, fmt.Errorf("%w: no issuer keys yet: %v", ErrSignature, err)
		}
		r.mu.RLock()
		v = r.current
		r.mu.RUnlock()
		return v.Verify(raw)
	}
	w, err := v.Verify(raw)
	if errors.Is(err, ErrSignature) {
		if ferr := r.fetchNow(); ferr != nil {
			return w, err
		}
		r.mu.RLock()
		v = r.current
		r.mu.RUnlock()
		return v.Verify(raw)
	}
	return w, err
}

var errRateLimited = errors.New("token keys were fetched moments ago")

// fetchNow fetches unless Verify started a fetch less than MinRefetch ago, so that neither
// tokens signed with unknown keys nor an unreachable issuer turn into a fetch per token.
func (r *RemoteVerifier) fetchNow() error {
	r.mu.Lock()
	now := r.cfg.Clock.Now()
	if !r.tried.IsZero() && now.Sub(r.tried) < r.cfg.MinRefetch || now.Sub(r.fetched) < r.cfg.MinRefetch {
		r.mu.Unlock()
		return errRateLimited
	}
	r.tried = now
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.Fetch(ctx)
}

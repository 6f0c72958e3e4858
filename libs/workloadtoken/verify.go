package workloadtoken

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"k8s.io/utils/clock"
)

// DefaultLeeway tolerates clock skew between the token issuer and the verifier.
const DefaultLeeway = 30 * time.Second

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	Issuer    string             // required "iss"
	Audiences []string           // the token must name at least one
	Keys      jose.JSONWebKeySet // the issuer's public keys
	Clock     clock.PassiveClock // nil means the real clock
	Leeway    time.Duration      // 0 means DefaultLeeway
}

// Verifier checks workload tokens. It is safe for concurrent use.
type Verifier struct {
	cfg VerifierConfig
}

// NewVerifier validates the config.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("token verifier: issuer is required")
	}
	if len(cfg.Audiences) == 0 {
		return nil, errors.New("token verifier: at least one audience is required")
	}
	if len(cfg.Keys.Keys) == 0 {
		return nil, errors.New("token verifier: no issuer keys")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = DefaultLeeway
	}
	return &Verifier{cfg: cfg}, nil
}

var allowedAlgorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.EdDSA}

// Verify checks the signature, issuer, audience and validity window, and that the token is bound
// to a pod. The returned errors wrap the package's sentinels.
func (v *Verifier) Verify(raw string) (Workload, error) {
	tok, err := jwt.ParseSigned(raw, allowedAlgorithms)
	if err != nil {
		return Workload{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var c claims
	if err := tok.Claims(v.cfg.Keys, &c); err != nil {
		return Workload{}, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	err = c.ValidateWithLeeway(jwt.Expected{
		Issuer:      v.cfg.Issuer,
		AnyAudience: v.cfg.Audiences,
		Time:        v.cfg.Clock.Now(),
	}, v.cfg.Leeway)
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return Workload{}, fmt.Errorf("%w at %s", ErrExpired, c.Expiry.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return Workload{}, ErrNotYetValid
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return Workload{}, fmt.Errorf("%w %q", ErrIssuer, c.Issuer)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return Workload{}, fmt.Errorf("%w: has %v, want one of %v", ErrAudience, []string(c.Audience), v.cfg.Audiences)
	case err != nil:
		return Workload{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if c.Expiry == nil {
		return Workload{}, fmt.Errorf("%w: no expiry", ErrMalformed)
	}
	k := c.Kubernetes
	if k.Pod == nil || k.Pod.Name == "" || k.Pod.UID == "" || k.Namespace == "" || k.ServiceAccount.Name == "" {
		return Workload{}, ErrNotBound
	}
	if c.Subject != subject(k.Namespace, k.ServiceAccount.Name) {
		return Workload{}, fmt.Errorf("%w: subject %q does not match its service account", ErrMalformed, c.Subject)
	}
	w := Workload{
		Namespace:      k.Namespace,
		ServiceAccount: k.ServiceAccount.Name,
		PodName:        k.Pod.Name,
		PodUID:         k.Pod.UID,
		Expiry:         c.Expiry.Time(),
	}
	if k.Node != nil {
		w.NodeName, w.NodeUID = k.Node.Name, k.Node.UID
	}
	return w, nil
}

// LoadKeySet reads a JWKS document (the issuer's public keys).
func LoadKeySet(path string) (jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	b, err := os.ReadFile(path)
	if err != nil {
		return set, fmt.Errorf("reading token issuer keys: %w", err)
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return set, fmt.Errorf("parsing token issuer keys %s: %w", path, err)
	}
	if len(set.Keys) == 0 {
		return set, fmt.Errorf("token issuer keys %s: no keys", path)
	}
	return set, nil
}

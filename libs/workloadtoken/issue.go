package workloadtoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"k8s.io/utils/clock"
)

// Issuer mints pod-bound workload tokens the way the Kubernetes TokenRequest API does. Portcullis
// runs one only in the dev stack and in tests; in a cluster the API server is the issuer.
type Issuer struct {
	name   string
	key    *ecdsa.PrivateKey
	keyID  string
	signer jose.Signer
	clock  clock.PassiveClock
}

// NewIssuer makes an issuer with a fresh ES256 key.
func NewIssuer(name string, clk clock.PassiveClock) (*Issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating issuer key: %w", err)
	}
	return IssuerFromKey(name, key, clk)
}

// IssuerFromKey makes an issuer around an existing key.
func IssuerFromKey(name string, key *ecdsa.PrivateKey, clk clock.PassiveClock) (*Issuer, error) {
	if clk == nil {
		clk = clock.RealClock{}
	}
	pub, err := json.Marshal(jose.JSONWebKey{Key: &key.PublicKey})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(pub)
	kid := hex.EncodeToString(sum[:8])
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("creating token signer: %w", err)
	}
	return &Issuer{name: name, key: key, keyID: kid, signer: signer, clock: clk}, nil
}

// Name is the issuer's "iss".
func (i *Issuer) Name() string { return i.name }

// Key is the issuer's signing key.
func (i *Issuer) Key() *ecdsa.PrivateKey { return i.key }

// KeySet is the public JWKS that verifiers need.
func (i *Issuer) KeySet() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &i.key.PublicKey, KeyID: i.keyID, Algorithm: string(jose.ES256), Use: "sig"}}}
}

// Issue mints a token for w (Expiry is ignored) valid for ttl. A NodeName adds the node claim.
func (i *Issuer) Issue(w Workload, audience []string, ttl time.Duration) (string, error) {
	now := i.clock.Now()
	c := claims{
		Claims: jwt.Claims{
			Issuer:    i.name,
			Subject:   subject(w.Namespace, w.ServiceAccount),
			Audience:  audience,
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    jwt.NewNumericDate(now.Add(ttl)),
		},
		Kubernetes: kubernetesClaims{
			Namespace:      w.Namespace,
			Pod:            &ref{Name: w.PodName, UID: w.PodUID},
			ServiceAccount: ref{Name: w.ServiceAccount},
		},
	}
	if w.NodeName != "" {
		c.Kubernetes.Node = &ref{Name: w.NodeName, UID: w.NodeUID}
	}
	return jwt.Signed(i.signer).Claims(c).Serialize()
}

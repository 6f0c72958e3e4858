package workloadtoken

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"strings"

	"k8s.io/utils/clock"
)

// KeySource says where a service gets the token issuer's keys: a JWKS file (the dev stack's
// issuer) or a JWKS URL (a Kubernetes API server's /openid/v1/jwks). Services embed it in their
// config.
type KeySource struct {
	JWKSFile       string
	JWKSURL        string
	JWKSCA         string
	JWKSBearerFile string
}

// RegisterFlags binds -token-jwks-file, -token-jwks-url, -token-jwks-ca and
// -token-jwks-bearer-file.
func (k *KeySource) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&k.JWKSFile, "token-jwks-file", "", "JWKS file with the token issuer's public keys (or -token-jwks-url)")
	fs.StringVar(&k.JWKSURL, "token-jwks-url", "", "https URL of the token issuer's JWKS, e.g. https://kubernetes.default.svc/openid/v1/jwks; refetched every 5m and on an unknown key")
	fs.StringVar(&k.JWKSCA, "token-jwks-ca", "", "CA file for -token-jwks-url (e.g. /var/run/secrets/kubernetes.io/serviceaccount/ca.crt); empty means the system roots")
	fs.StringVar(&k.JWKSBearerFile, "token-jwks-bearer-file", "", "bearer token file for -token-jwks-url, read on every fetch (e.g. /var/run/secrets/kubernetes.io/serviceaccount/token)")
}

// Validate wants exactly one of the file and the URL.
func (k *KeySource) Validate() error {
	switch {
	case k.JWKSFile == "" && k.JWKSURL == "":
		return errors.New("one of -token-jwks-file and -token-jwks-url is required")
	case k.JWKSFile != "" && k.JWKSURL != "":
		return errors.New("-token-jwks-file and -token-jwks-url exclude each other")
	case k.JWKSURL == "" && (k.JWKSCA != "" || k.JWKSBearerFile != ""):
		return errors.New("-token-jwks-ca and -token-jwks-bearer-file need -token-jwks-url")
	}
	return nil
}

// NewVerifier builds the verifier for the configured keys. run keeps remote keys fresh and must
// be run until the service stops; for a file it returns at once.
func (k *KeySource) NewVerifier(issuer string, audiences []string, clk clock.PassiveClock, logger *slog.Logger) (v TokenVerifier, run func(context.Context) error, err error) {
	if k.JWKSURL != "" {
		r, err := NewRemoteVerifier(JWKSConfig{URL: k.JWKSURL, CAFile: k.JWKSCA, BearerTokenFile: k.JWKSBearerFile,
			Issuer: issuer, Audiences: audiences, Clock: clk, Logger: logger})
		if err != nil {
			return nil, nil, err
		}
		return r, r.Run, nil
	}
	keys, err := LoadKeySet(k.JWKSFile)
	if err != nil {
		return nil, nil, err
	}
	fv, err := NewVerifier(VerifierConfig{Issuer: issuer, Audiences: audiences, Keys: keys, Clock: clk})
	if err != nil {
		return nil, nil, err
	}
	return fv, func(context.Context) error { return nil }, nil
}

// SplitAudiences splits a comma-separated -token-audience value, dropping empty entries.
func SplitAudiences(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

package sds

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// Resource names a sidecar can ask for, besides its own SPIFFE ID (served like DefaultName).
const (
	DefaultName = "default"
	RootCAName  = "ROOTCA"
)

var (
	errUnknownName = errors.New("unknown resource name")
	errForeignName = errors.New("resource belongs to another identity")
)

// checkName admits the names a caller may subscribe to.
func checkName(caller identity.Caller, name string) error {
	switch {
	case name == DefaultName, name == RootCAName, name == caller.ID.String():
		return nil
	case isGatewayName(name):
		return nil // authorized when built: the caller's service account must be allowed
	case strings.HasPrefix(name, "spiffe://"):
		return fmt.Errorf("%w: %q; this stream is authenticated as %s", errForeignName, name, caller.ID)
	case strings.HasPrefix(name, KeySecretPrefix):
		return nil // authorized when built, against the pod's labels of the moment (keysecret.go)
	}
	return fmt.Errorf("%w %q: this agent serves %q, %q and the caller's SPIFFE ID %q",
		errUnknownName, name, DefaultName, RootCAName, caller.ID)
}

// built is one rendered resource with its content version.
type built struct {
	res     *anypb.Any
	version string
	// refused, if set, is why the caller may not have this resource now (res is nil).
	refused error
}

// build renders the named resources for caller, fetching or issuing what is missing. What was
// rendered for another stream from the same bundle or certificate is reused.
func (s *Server) build(ctx context.Context, caller identity.Caller, names []string) (map[string]built, error) {
	out := make(map[string]built, len(names))
	for _, name := range names {
		if strings.HasPrefix(name, KeySecretPrefix) {
			out[name] = s.keySecret(ctx, caller, name)
			continue
		}
		var (
			b   built
			err error
		)
		if isGatewayName(name) {
			b, err = s.gateway(caller, name)
		} else if name == RootCAName {
			roots, rerr := retry(ctx, s.cfg.Logger, func() ([]*x509.Certificate, error) { return s.cfg.Secrets.Roots(ctx) })
			if rerr != nil {
				return nil, rerr
			}
			b, err = s.rendered.bundle(roots, func() (built, error) { return renderBundle(roots) })
		} else {
			cert, cerr := retry(ctx, s.cfg.Logger, func() (*secrets.Certificate, error) {
				return s.cfg.Secrets.Certificate(ctx, caller.ID, secrets.Credential{Pod: caller.Pod, Token: caller.Token})
			})
			if cerr != nil {
				return nil, cerr
			}
			b, err = s.rendered.certificate(name, cert, func() (built, error) { return renderCertificate(name, cert) })
		}
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	return out, nil
}

func renderBundle(roots []*x509.Certificate) (built, error) {
	pem := pemcerts.Encode(roots)
	sum := sha256.Sum256(pem)
	return render(&tlsv3.Secret{Name: RootCAName, Type: &tlsv3.Secret_ValidationContext{
		ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(pem)},
	}}, hex.EncodeToString(sum[:8]))
}

func renderCertificate(name string, cert *secrets.Certificate) (built, error) {
	return render(&tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{
		TlsCertificate: &tlsv3.TlsCertificate{CertificateChain: inline(cert.ChainPEM), PrivateKey: inline(cert.KeyPEM)},
	}}, cert.Leaf().SerialNumber.Text(16))
}

func render(secret *tlsv3.Secret, version string) (built, error) {
	a, err := anypb.New(secret)
	if err != nil {
		return built{}, fmt.Errorf("encoding secret %q: %w", secret.GetName(), err)
	}
	return built{res: a, version: version}, nil
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

package sds

import (
	"context"
	"crypto/sha256"
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
	case strings.HasPrefix(name, "spiffe://"):
		return fmt.Errorf("%w: %q; this stream is authenticated as %s", errForeignName, name, caller.ID)
	}
	return fmt.Errorf("%w %q: this agent serves %q, %q and the caller's SPIFFE ID %q",
		errUnknownName, name, DefaultName, RootCAName, caller.ID)
}

// built is one rendered resource with its content version.
type built struct {
	res     *anypb.Any
	version string
}

// build renders the named resources for caller, fetching or issuing what is missing.
func (s *Server) build(ctx context.Context, caller identity.Caller, names []string) (map[string]built, error) {
	out := make(map[string]built, len(names))
	for _, name := range names {
		var (
			secret  *tlsv3.Secret
			version string
		)
		if name == RootCAName {
			roots, err := retry(ctx, s.cfg.Logger, func() ([]byte, error) {
				r, err := s.cfg.Secrets.Roots(ctx)
				return pemcerts.Encode(r), err
			})
			if err != nil {
				return nil, err
			}
			sum := sha256.Sum256(roots)
			version = hex.EncodeToString(sum[:8])
			secret = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{
				ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(roots)},
			}}
		} else {
			cert, err := retry(ctx, s.cfg.Logger, func() (*secrets.Certificate, error) {
				return s.cfg.Secrets.Certificate(ctx, caller.ID, caller.Token)
			})
			if err != nil {
				return nil, err
			}
			version = cert.Leaf().SerialNumber.Text(16)
			secret = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{
				TlsCertificate: &tlsv3.TlsCertificate{CertificateChain: inline(cert.ChainPEM), PrivateKey: inline(cert.KeyPEM)},
			}}
		}
		a, err := anypb.New(secret)
		if err != nil {
			return nil, fmt.Errorf("encoding secret %q: %w", name, err)
		}
		out[name] = built{res: a, version: version}
	}
	return out, nil
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

package servicetls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
)

// Files locates a service's identity on disk.
type Files struct {
	CertFile string // PEM certificate chain, leaf first
	KeyFile  string // PEM private key (kept 0600)
	CAFile   string // PEM control-plane CA bundle
}

// RegisterFlags binds the files to -tls-cert, -tls-key and -tls-ca.
func (f *Files) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.CertFile, "tls-cert", "", "control-plane certificate chain (PEM)")
	fs.StringVar(&f.KeyFile, "tls-key", "", "control-plane private key (PEM)")
	fs.StringVar(&f.CAFile, "tls-ca", "", "control-plane CA bundle (PEM)")
}

// Validate reports a missing file name.
func (f Files) Validate() error {
	if f.CertFile == "" || f.KeyFile == "" || f.CAFile == "" {
		return errors.New("-tls-cert, -tls-key and -tls-ca are required: every service-to-service hop is mTLS")
	}
	return nil
}

// Identity is a loaded service certificate with the control-plane CA bundle it trusts.
type Identity struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// Load reads and checks the files: the certificate must carry a SPIFFE ID and match the key.
func Load(f Files) (*Identity, error) {
	svid, err := x509svid.Load(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("loading service certificate %s: %w", f.CertFile, err)
	}
	bundle, err := x509bundle.Load(svid.ID.TrustDomain(), f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("loading control-plane CA %s: %w", f.CAFile, err)
	}
	return &Identity{svid: svid, bundle: bundle}, nil
}

// ID is the service's own SPIFFE ID.
func (i *Identity) ID() spiffeid.ID { return i.svid.ID }

// TrustDomain is the trust domain of the service's own ID.
func (i *Identity) TrustDomain() spiffeid.TrustDomain { return i.svid.ID.TrustDomain() }

// ServerTLS asks every client for a certificate and verifies any it gets against the control-plane
// CA. A client without one still completes the handshake, so that the RPC layer can refuse it with
// a clear gRPC error (see PeerID) instead of an opaque TLS alert.
func (i *Identity) ServerTLS() *tls.Config {
	conf := tlsconfig.TLSServerConfig(i.svid)
	conf.ClientAuth = tls.RequestClientCert
	verify := tlsconfig.VerifyPeerCertificate(i.bundle, tlsconfig.AuthorizeMemberOf(i.TrustDomain()))
	conf.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil
		}
		return verify(raw, chains)
	}
	return conf
}

// ServerCredentials wraps ServerTLS for gRPC.
func (i *Identity) ServerCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(i.ServerTLS())
}

// ClientCredentials dials a server that must present exactly the given ID.
func (i *Identity) ClientCredentials(server spiffeid.ID) credentials.TransportCredentials {
	return credentials.NewTLS(tlsconfig.MTLSClientConfig(i.svid, i.bundle, tlsconfig.AuthorizeID(server)))
}

package servicetls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"

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
//
// Rotating the files on disk is enough to rotate the identity: every handshake uses the current
// files (see fileSource), so no restart is needed.
type Identity struct {
	id     spiffeid.ID
	source Source
}

// Source is where an Identity takes its current certificate and CA bundle, at every handshake.
// Implementations are safe for concurrent use; the certificate's ID never changes.
type Source interface {
	x509svid.Source
	x509bundle.Source
	// ReloadError says why the last change was not taken (nil if it was, or none came).
	ReloadError() error
}

// FromSource makes an Identity of id served by s (e.g. a Rotating identity obtained by node
// attestation instead of from files).
func FromSource(id spiffeid.ID, s Source) *Identity { return &Identity{id: id, source: s} }

// Load reads and checks the files: the certificate must carry a SPIFFE ID and match the key.
func Load(f Files) (*Identity, error) {
	source, err := newFileSource(f)
	if err != nil {
		return nil, err
	}
	return &Identity{id: source.svid.ID, source: source}, nil
}

// ID is the service's own SPIFFE ID.
func (i *Identity) ID() spiffeid.ID { return i.id }

// TrustDomain is the trust domain of the service's own ID.
func (i *Identity) TrustDomain() spiffeid.TrustDomain { return i.id.TrustDomain() }

// ReloadError says why the last change to the files was not taken (nil if it was, or none came).
func (i *Identity) ReloadError() error { return i.source.ReloadError() }

// ServerTLS asks every client for a certificate and verifies any it gets against the control-plane
// CA. A client without one still completes the handshake, so that the RPC layer can refuse it with
// a clear gRPC error (see PeerID) instead of an opaque TLS alert.
func (i *Identity) ServerTLS() *tls.Config {
	conf := tlsconfig.TLSServerConfig(i.source)
	conf.ClientAuth = tls.RequestClientCert
	verify := tlsconfig.VerifyPeerCertificate(i.source, tlsconfig.AuthorizeMemberOf(i.TrustDomain()))
	conf.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil
		}
		return verify(raw, chains)
	}
	return conf
}

// ServerTLSWithoutClientAuth serves this identity to clients that have none yet (node
// attestation): it asks for no client certificate.
func (i *Identity) ServerTLSWithoutClientAuth() *tls.Config {
	conf := tlsconfig.TLSServerConfig(i.source)
	conf.ClientAuth = tls.NoClientCert
	return conf
}

// ServerCredentials wraps ServerTLS for gRPC.
func (i *Identity) ServerCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(i.ServerTLS())
}

// ClientCredentials dials a server that must present exactly the given ID.
func (i *Identity) ClientCredentials(server spiffeid.ID) credentials.TransportCredentials {
	return credentials.NewTLS(i.ClientTLS(server))
}

// ClientTLS presents this identity to a server that must present exactly the given ID.
func (i *Identity) ClientTLS(server spiffeid.ID) *tls.Config {
	return tlsconfig.MTLSClientConfig(i.source, i.source, tlsconfig.AuthorizeID(server))
}

// ClientCertificate presents this identity (the current certificate, as rotated on disk) to a
// server verified some other way, e.g. an external NATS server with a public certificate.
func (i *Identity) ClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return tlsconfig.GetClientCertificate(i.source)(nil)
}

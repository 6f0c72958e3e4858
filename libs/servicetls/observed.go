package servicetls

import (
	"crypto/tls"
	"crypto/x509"
)

// RejectedClient describes a client certificate the handshake refused: it did not chain to the
// control-plane CA or named no member of the trust domain (a workload certificate presented where
// a node agent's is expected, say). Nothing in it is verified: it is what the client claimed.
type RejectedClient struct {
	RemoteAddr string
	URIs       []string // the leaf's URI SANs (its claimed SPIFFE ID)
	Subject    string
	Issuer     string
	Err        error
}

// ServerTLSObserved is ServerTLS that also reports every client certificate it refuses to
// onReject, so the server can log whose it was: the client only sees a TLS alert.
func (i *Identity) ServerTLSObserved(onReject func(RejectedClient)) *tls.Config {
	base := i.ServerTLS()
	conf := base.Clone()
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		verify := c.VerifyPeerCertificate
		c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			err := verify(raw, chains)
			if err != nil {
				r := RejectedClient{Err: err}
				if hello.Conn != nil {
					r.RemoteAddr = hello.Conn.RemoteAddr().String()
				}
				if leaf, perr := x509.ParseCertificate(raw[0]); perr == nil {
					for _, u := range leaf.URIs {
						r.URIs = append(r.URIs, u.String())
					}
					r.Subject, r.Issuer = leaf.Subject.String(), leaf.Issuer.String()
				}
				onReject(r)
			}
			return err
		}
		return c, nil
	}
	return conf
}

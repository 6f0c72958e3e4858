package stack

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

// SVID is what a sidecar holds after SDS: its certificate, key and trust bundle.
type SVID struct {
	ID    spiffeid.ID
	Cert  tls.Certificate
	Roots []*x509.Certificate
}

// Leaf is the workload certificate.
func (s *SVID) Leaf() *x509.Certificate { return s.Cert.Leaf }

// FetchSVID opens an SDS stream on socket like a sidecar, asks for "default" and "ROOTCA" and
// returns the first answer.
func FetchSVID(ctx context.Context, socket string, cred sdsclient.Credential, nodeID string) (*SVID, error) {
	c, err := sdsclient.Dial(socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := c.Open(ctx, nodeID, cred)
	if err != nil {
		return nil, err
	}
	if err := st.Request(true, "default", "ROOTCA"); err != nil {
		return nil, err
	}
	secrets, err := st.Recv()
	if err != nil {
		return nil, err
	}
	return SVIDFromSecrets(secrets)
}

// SVIDFromSecrets decodes the "default" and "ROOTCA" secrets.
func SVIDFromSecrets(secrets map[string]*tlsv3.Secret) (*SVID, error) {
	def, root := secrets["default"], secrets["ROOTCA"]
	if def == nil || root == nil {
		return nil, fmt.Errorf("response lacks default or ROOTCA (got %d secrets)", len(secrets))
	}
	cert, err := sdsclient.Certificate(def)
	if err != nil {
		return nil, err
	}
	roots, err := sdsclient.Roots(root)
	if err != nil {
		return nil, err
	}
	if len(cert.Leaf.URIs) != 1 {
		return nil, fmt.Errorf("leaf has %d URI SANs, want 1", len(cert.Leaf.URIs))
	}
	id, err := spiffeid.FromURI(cert.Leaf.URIs[0])
	if err != nil {
		return nil, err
	}
	return &SVID{ID: id, Cert: cert, Roots: roots}, nil
}

func (s *SVID) source() (*x509svid.SVID, *x509bundle.Bundle, error) {
	var chain []*x509.Certificate
	for _, der := range s.Cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, err
		}
		chain = append(chain, c)
	}
	key, ok := s.Cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("workload key is not a crypto.Signer")
	}
	svid := &x509svid.SVID{ID: s.ID, Certificates: chain, PrivateKey: key}
	return svid, x509bundle.FromX509Authorities(s.ID.TrustDomain(), s.Roots), nil
}

// Handshake runs a real mutual-TLS handshake over loopback TCP between client and server, each
// verifying the other's chain against its own ROOTCA and authorizing the other's SPIFFE ID, then
// exchanges one line. It returns the TLS version and cipher suite.
func Handshake(ctx context.Context, client, server *SVID) (string, error) {
	csvid, cbundle, err := client.source()
	if err != nil {
		return "", err
	}
	ssvid, sbundle, err := server.source()
	if err != nil {
		return "", err
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(ssvid, sbundle, tlsconfig.AuthorizeID(client.ID)))
	if err != nil {
		return "", err
	}
	defer lis.Close()
	serverErr := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err == nil {
			_, err = fmt.Fprintf(conn, "hello %s, from %s\n", line[:len(line)-1], server.ID)
		}
		serverErr <- err
	}()
	d := tls.Dialer{Config: tlsconfig.MTLSClientConfig(csvid, cbundle, tlsconfig.AuthorizeID(server.ID))}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", lis.Addr().String())
	if err != nil {
		return "", fmt.Errorf("mtls handshake %s -> %s: %w", client.ID, server.ID, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\n", client.ID); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading reply: %w", err)
	}
	if err := <-serverErr; err != nil {
		return "", fmt.Errorf("server side: %w", err)
	}
	if reply == "" {
		return "", errors.New("empty reply")
	}
	st := conn.(*tls.Conn).ConnectionState()
	return fmt.Sprintf("%s %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)), nil
}

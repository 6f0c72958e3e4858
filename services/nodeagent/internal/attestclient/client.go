// Package attestclient obtains the node agent's control-plane certificate by node attestation:
// it sends citadel the service-account token the kubelet projected into the agent's pod and a CSR
// for a key made here, and gets spiffe://<td>/portcullis/nodeagent/<node> back. The key stays in
// memory (a servicetls.Rotating identity); the certificate is renewed at half-life, with a fresh
// key and the token as the kubelet last refreshed it.
package attestclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	attestv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/attest/v1"
)

// Retry bounds: the first retry comes quickly (citadel may just be starting), later ones back
// off so that a fleet of agents does not hammer a citadel that refuses them.
const (
	minBackoff  = time.Second
	maxBackoff  = time.Minute
	callTimeout = 15 * time.Second
)

// Config carries the client's dependencies.
type Config struct {
	Addr      string // citadel's attest address
	TokenFile string // the projected service-account token, re-read for every attestation
	CAFile    string // the control-plane CA bundle, re-read for every handshake
	NodeName  string
	Clock     clock.Clock // nil: the real clock
	Logger    *slog.Logger
	Observe   Observer // nil: not observed
}

// Observer is told of every attestation's outcome (metrics.Attest satisfies it). Its methods
// must be safe for concurrent use.
type Observer interface {
	Attested(notAfter time.Time)
	AttestFailed()
}

type nopObserver struct{}

func (nopObserver) Attested(time.Time) {}
func (nopObserver) AttestFailed()      {}

// Client attests this node to citadel. It is safe for concurrent use.
type Client struct {
	cfg    Config
	conn   *grpc.ClientConn
	client attestv1.NodeAttestationServiceClient
}

// New prepares the connection (dialed lazily).
func New(cfg Config) (*Client, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Observe == nil {
		cfg.Observe = nopObserver{}
	}
	c := &Client{cfg: cfg}
	conn, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(credentials.NewTLS(c.tlsConfig())))
	if err != nil {
		return nil, fmt.Errorf("dialing citadel's attest service at %s: %w", cfg.Addr, err)
	}
	c.conn, c.client = conn, attestv1.NewNodeAttestationServiceClient(conn)
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// tlsConfig presents no client certificate (the agent has none yet) and accepts only a server
// certificate that chains to the control-plane CA and names citadel
// (spiffe://<td>/portcullis/citadel). The hostname is not checked: the SPIFFE ID is the name.
func (c *Client) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, //nolint:gosec // verified below, by CA and SPIFFE ID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs, err := parseChain(raw)
			if err != nil {
				return err
			}
			if _, err := c.verify(certs, x509.ExtKeyUsageServerAuth); err != nil {
				return fmt.Errorf("citadel's attest certificate: %w", err)
			}
			id, err := x509svid.IDFromCert(certs[0])
			if err != nil {
				return fmt.Errorf("citadel's attest certificate: %w", err)
			}
			if !servicetls.IsService(id, servicetls.Citadel) {
				return fmt.Errorf("attest server presented %s, want citadel's ID", id)
			}
			return nil
		},
	}
}

func parseChain(raw [][]byte) ([]*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, der := range raw {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate: %w", err)
		}
		certs = append(certs, cert)
	}
	return certs, nil
}

// verify checks that certs (leaf first) chain to the control-plane CA as it is on disk now.
func (c *Client) verify(certs []*x509.Certificate, usage x509.ExtKeyUsage) ([][]*x509.Certificate, error) {
	b, err := os.ReadFile(c.cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading control-plane CA: %w", err)
	}
	cas, err := pemcerts.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("control-plane CA %s: %w", c.cfg.CAFile, err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	return certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage},
		CurrentTime: c.cfg.Clock.Now()})
}

// Attest makes a fresh key and obtains its certificate. The result is checked: it chains to the
// control-plane CA, names this node's agent and certifies the key.
func (c *Client) Attest(ctx context.Context) (*x509svid.SVID, error) {
	raw, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading the attestation token: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("creating csr: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.client.AttestNode(ctx, &attestv1.AttestNodeRequest{Token: token, Csr: csr})
	if err != nil {
		return nil, fmt.Errorf("node attestation at %s: %w", c.cfg.Addr, err)
	}
	certs, err := parseChain(resp.GetCertChain())
	if err != nil {
		return nil, fmt.Errorf("attested certificate: %w", err)
	}
	if _, err := c.verify(certs, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("attested certificate does not chain to the control-plane CA: %w", err)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return nil, fmt.Errorf("attested certificate: %w", err)
	}
	if node, ok := servicetls.NodeOf(id); !ok || node != c.cfg.NodeName {
		return nil, fmt.Errorf("attested certificate names %s, not the node agent of node %q", id, c.cfg.NodeName)
	}
	if !key.PublicKey.Equal(certs[0].PublicKey) {
		return nil, errors.New("attested certificate does not certify the key sent")
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// First attests until it succeeds or ctx ends, backing off between failures.
func (c *Client) First(ctx context.Context) (*x509svid.SVID, error) {
	backoff := minBackoff
	for {
		svid, err := c.Attest(ctx)
		if err == nil {
			c.cfg.Observe.Attested(svid.Certificates[0].NotAfter)
			c.cfg.Logger.Info("node attested", "spiffe_id", svid.ID.String(), "expires", svid.Certificates[0].NotAfter)
			return svid, nil
		}
		c.cfg.Observe.AttestFailed()
		c.cfg.Logger.Warn("node attestation failed; retrying", "err", err, "retry_in", backoff)
		if err := c.sleep(ctx, jittered(backoff)); err != nil {
			return nil, err
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// Run renews the certificate of r at half its remaining lifetime, counted from when it was
// received (certificates are backdated against clock skew, so NotBefore would renew too early),
// until ctx ends. A failed renewal is retried with backoff; the current certificate stays in use
// meanwhile.
func (c *Client) Run(ctx context.Context, r *servicetls.Rotating) error {
	backoff := minBackoff
	received := c.cfg.Clock.Now()
	for {
		leaf := r.Current().Certificates[0]
		// Never sooner than minBackoff: a certificate cut short by an expiring CA must not make
		// the agent attest in a tight loop.
		renewAt := received.Add(max(leaf.NotAfter.Sub(received)/2, minBackoff))
		if err := c.sleep(ctx, renewAt.Sub(c.cfg.Clock.Now())); err != nil {
			return nil
		}
		svid, err := c.Attest(ctx)
		if err == nil {
			err = r.Set(svid)
		}
		if err != nil {
			c.cfg.Observe.AttestFailed()
			c.cfg.Logger.Warn("renewing the node agent certificate failed; retrying", "err", err,
				"retry_in", backoff, "current_expires", leaf.NotAfter)
			if err := c.sleep(ctx, jittered(backoff)); err != nil {
				return nil
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff, received = minBackoff, c.cfg.Clock.Now()
		c.cfg.Observe.Attested(svid.Certificates[0].NotAfter)
		c.cfg.Logger.Info("node agent certificate renewed", "spiffe_id", svid.ID.String(), "expires", svid.Certificates[0].NotAfter)
	}
}

// jittered spreads retries of many agents by ±20%.
func jittered(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64())) //nolint:gosec // not for secrets
}

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := c.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

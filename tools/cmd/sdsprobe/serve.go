package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
)

// ioTimeout bounds one mTLS exchange, on both sides.
const ioTimeout = 10 * time.Second

// authorizeTrustDomain accepts any SPIFFE ID in the trust domain of the probe's current SVID.
func (p *probe) authorizeTrustDomain(id spiffeid.ID, _ [][]*x509.Certificate) error {
	td, err := p.id.trustDomain()
	if err != nil {
		return err
	}
	if !id.MemberOf(td) {
		return fmt.Errorf("peer %s is not in trust domain %s", id, td)
	}
	return nil
}

// serveMTLS accepts mTLS connections with the current SVID, requires a client certificate that
// chains to the current bundle, records the client's SPIFFE ID and answers one line:
// "hello <client id> from <own id>".
func (p *probe) serveMTLS(ctx context.Context) error {
	lis := tls.NewListener(p.mtlsLis, tlsconfig.MTLSServerConfig(p.id, p.id, p.authorizeTrustDomain))
	stop := context.AfterFunc(ctx, func() { lis.Close() })
	defer stop()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		conn, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("mtls accept: %w", err)
		}
		conns.Go(func() {
			defer conn.Close()
			if err := p.greet(conn.(*tls.Conn)); err != nil {
				p.logger.Warn("mtls connection failed", "remote", conn.RemoteAddr().String(), "err", err)
			}
		})
	}
}

func (p *probe) greet(conn *tls.Conn) error {
	_ = conn.SetDeadline(time.Now().Add(ioTimeout))
	if err := conn.Handshake(); err != nil {
		return err
	}
	peer, err := peerID(conn)
	if err != nil {
		return err
	}
	p.id.addPeer(peer)
	self, err := p.id.GetX509SVID()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(conn, "hello %s from %s\n", peer, self.ID)
	return err
}

func peerID(conn *tls.Conn) (spiffeid.ID, error) {
	certs := conn.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return spiffeid.ID{}, errors.New("peer presented no certificate")
	}
	return x509svid.IDFromCert(certs[0])
}

// handshakeResult is the answer of POST /handshake.
type handshakeResult struct {
	OK           bool   `json:"ok"`
	PeerSPIFFEID string `json:"peer_spiffe_id"`
	Error        string `json:"error"`
}

// handshake dials addr with mTLS using the current SVID and bundle, and reads the server's
// greeting: with TLS 1.3 the client finishes its handshake before the server has checked the
// client certificate, so only the greeting proves that both sides accepted each other.
func (p *probe) handshake(ctx context.Context, addr string) (spiffeid.ID, error) {
	ctx, cancel := context.WithTimeout(ctx, ioTimeout)
	defer cancel()
	d := tls.Dialer{Config: tlsconfig.MTLSClientConfig(p.id, p.id, p.authorizeTrustDomain)}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls handshake with %s: %w", addr, err)
	}
	defer c.Close()
	conn := c.(*tls.Conn)
	peer, err := peerID(conn)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return peer, fmt.Errorf("reading greeting from %s (%s): %w", addr, peer, err)
	}
	if !strings.HasPrefix(line, "hello ") {
		return peer, fmt.Errorf("unexpected greeting from %s: %q", addr, line)
	}
	return peer, nil
}

// serveHTTP serves the status API: GET /status, GET /readyz, POST /handshake?addr=HOST:PORT.
func (p *probe) serveHTTP(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			status
			namesStatus
		}{p.id.status(), p.res.status()})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := p.id.GetX509SVID(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("POST /handshake", func(w http.ResponseWriter, r *http.Request) {
		addr := r.URL.Query().Get("addr")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			writeJSON(w, http.StatusBadRequest, handshakeResult{Error: "addr: want HOST:PORT: " + err.Error()})
			return
		}
		peer, err := p.handshake(r.Context(), addr)
		res := handshakeResult{OK: err == nil}
		if !peer.IsZero() {
			res.PeerSPIFFEID = peer.String()
		}
		code := http.StatusOK
		if err != nil {
			res.Error, code = err.Error(), http.StatusBadGateway
		}
		writeJSON(w, code, res)
	})
	return lifecycle.ServeHTTP(ctx, &http.Server{Handler: mux, ReadHeaderTimeout: ioTimeout}, p.httpLis)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

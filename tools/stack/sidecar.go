package stack

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

// Sidecar holds an SDS stream open like Envoy does for a pod's life, asking for "default" and
// "ROOTCA", and keeps every version it is pushed.
type Sidecar struct {
	client *sdsclient.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	history []*SVID
	changed chan struct{} // closed and replaced on every push
	err     error
}

// OpenSidecar opens the stream and waits for the first answer.
func OpenSidecar(ctx context.Context, socket string, cred sdsclient.Credential, nodeID string) (*Sidecar, error) {
	c, err := sdsclient.Dial(socket)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	st, err := c.Open(sctx, nodeID, cred)
	if err == nil {
		err = st.Request(true, "default", "ROOTCA")
	}
	if err != nil {
		cancel()
		c.Close()
		return nil, err
	}
	s := &Sidecar{client: c, cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	go s.follow(st)
	if _, err := s.WaitFor(ctx, func(*SVID) bool { return true }); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Sidecar) follow(st *sdsclient.Stream) {
	defer close(s.done)
	for {
		secrets, err := st.Recv()
		var svid *SVID
		if err == nil {
			svid, err = SVIDFromSecrets(secrets)
		}
		s.mu.Lock()
		if err != nil {
			s.err = err
		} else {
			s.history = append(s.history, svid)
		}
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Current is the latest SVID pushed.
func (s *Sidecar) Current() *SVID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.history[len(s.history)-1]
}

// Pushes is how many responses the stream has received.
func (s *Sidecar) Pushes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.history)
}

// WaitFor waits until the latest SVID satisfies cond, the stream fails or ctx ends.
func (s *Sidecar) WaitFor(ctx context.Context, cond func(*SVID) bool) (*SVID, error) {
	for {
		s.mu.Lock()
		var cur *SVID
		if n := len(s.history); n > 0 {
			cur = s.history[n-1]
		}
		changed, err := s.changed, s.err
		s.mu.Unlock()
		if cur != nil && cond(cur) {
			return cur, nil
		}
		if err != nil {
			return nil, fmt.Errorf("sds stream ended: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a pushed SVID: %w", ctx.Err())
		case <-changed:
		}
	}
}

// Close ends the stream.
func (s *Sidecar) Close() error {
	s.cancel()
	<-s.done
	return s.client.Close()
}

// ChainsTo reports whether the SVID's leaf verifies up to root.
func (s *SVID) ChainsTo(root *x509.Certificate) bool {
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(root)
	for _, der := range s.Cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	_, err := s.Leaf().Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: time.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// Trusts reports whether root is in the SVID's ROOTCA.
func (s *SVID) Trusts(root *x509.Certificate) bool { return slices.ContainsFunc(s.Roots, root.Equal) }

package sdsload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

// Sidecar is one pod's way of talking to the agent: its node ID and credential.
type Sidecar struct {
	NodeID string
	Cred   sdsclient.Credential
}

// FleetConfig says how many streams to open and how.
type FleetConfig struct {
	Socket   string
	Sidecars []Sidecar
	// StreamsPerSidecar streams are opened for every sidecar (default 1).
	StreamsPerSidecar int
	// StreamsPerConn streams share one gRPC connection (default 100); consecutive streams of a
	// sidecar share connections.
	StreamsPerConn int
	// Opening bounds how many streams wait for their first response at once (0: no bound, every
	// stream asks at the same moment).
	Opening int
	// Names are requested on every stream (default "default", "ROOTCA").
	Names []string
}

// Fleet is a set of open SDS streams. Every stream keeps receiving (and ACKing) until Close,
// and remembers when each new trust bundle reached it.
type Fleet struct {
	conns   []*sdsclient.Client
	streams []*stream
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	changed chan struct{} // pinged (coalesced) when any stream sees a new ROOTCA or fails
}

type stream struct {
	st *sdsclient.Stream

	mu      sync.Mutex
	bundles []arrival // every distinct ROOTCA received, in order
	chain   []byte    // the last "default" certificate chain received
	chainAt time.Time // when it arrived
	err     error     // why the stream stopped receiving, if it did before Close
}

type arrival struct {
	at        time.Time
	trustedCA []byte // PEM
}

// Open opens every stream and returns once each has received its first response, or with
// the first error (having closed what it opened). FirstResponse reports, per stream, the time from
// asking until that first response.
func Open(ctx context.Context, cfg FleetConfig) (f *Fleet, firstResponse []time.Duration, err error) {
	if cfg.StreamsPerSidecar <= 0 {
		cfg.StreamsPerSidecar = 1
	}
	if cfg.StreamsPerConn <= 0 {
		cfg.StreamsPerConn = 100
	}
	if len(cfg.Names) == 0 {
		cfg.Names = []string{"default", "ROOTCA"}
	}
	n := len(cfg.Sidecars) * cfg.StreamsPerSidecar
	if n == 0 {
		return nil, nil, errors.New("no sidecars")
	}
	runCtx, cancel := context.WithCancel(context.Background())
	f = &Fleet{cancel: cancel, streams: make([]*stream, n), changed: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			f.Close()
			f = nil
		}
	}()
	for range (n + cfg.StreamsPerConn - 1) / cfg.StreamsPerConn {
		c, err := sdsclient.Dial(cfg.Socket)
		if err != nil {
			return nil, nil, err
		}
		f.conns = append(f.conns, c)
	}
	firstResponse = make([]time.Duration, n)
	g, gctx := errgroup.WithContext(ctx)
	if cfg.Opening > 0 {
		g.SetLimit(cfg.Opening)
	}
	for i := range n {
		sc := cfg.Sidecars[i/cfg.StreamsPerSidecar]
		conn := f.conns[i/cfg.StreamsPerConn]
		g.Go(func() error {
			start := time.Now()
			st, err := f.open(runCtx, gctx, conn, sc, cfg.Names)
			if err != nil {
				return fmt.Errorf("stream %d (%s): %w", i, sc.NodeID, err)
			}
			firstResponse[i] = time.Since(start)
			f.streams[i] = st
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return f, nil, err
	}
	for _, st := range f.streams {
		f.wg.Go(func() { f.receive(st) })
	}
	return f, firstResponse, nil
}

// open starts one stream on runCtx (which lives until Close) and waits, at most until waitCtx
// ends, for its first response.
func (f *Fleet) open(runCtx, waitCtx context.Context, conn *sdsclient.Client, sc Sidecar, names []string) (*stream, error) {
	sctx, cancel := context.WithCancel(runCtx)
	stop := context.AfterFunc(waitCtx, cancel) // a failed wait must not leave the stream open
	defer stop()
	st, err := conn.Open(sctx, sc.NodeID, sc.Cred)
	if err == nil {
		err = st.Request(true, names...)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	secrets, err := st.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	s := &stream{st: st}
	s.record(secrets, time.Now())
	return s, nil
}

// record notes a new ROOTCA or default certificate among secrets.
func (s *stream) record(secrets map[string]*tlsv3.Secret, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ca := secrets["ROOTCA"]; ca != nil {
		pem := ca.GetValidationContext().GetTrustedCa().GetInlineBytes()
		if len(s.bundles) == 0 || !bytes.Equal(s.bundles[len(s.bundles)-1].trustedCA, pem) {
			s.bundles = append(s.bundles, arrival{at, pem})
		}
	}
	if def := secrets["default"]; def != nil {
		chain := def.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
		if !bytes.Equal(s.chain, chain) {
			s.chain, s.chainAt = chain, at
		}
	}
}

// receive reads pushes until the stream ends, recording each ROOTCA that differs from the last.
func (f *Fleet) receive(s *stream) {
	for {
		secrets, err := s.st.Recv()
		at := time.Now()
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			f.ping()
			return
		}
		s.record(secrets, at)
		f.ping()
	}
}

func (f *Fleet) ping() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// Len is the number of streams.
func (f *Fleet) Len() int { return len(f.streams) }

// AwaitBundle waits until every stream has received, at or after since, a ROOTCA whose PEM
// satisfies match, and returns per stream the time from since until the first such arrival.
func (f *Fleet) AwaitBundle(ctx context.Context, match func(trustedCA []byte) bool, since time.Time) ([]time.Duration, error) {
	out := make([]time.Duration, len(f.streams))
	pending := make([]int, len(f.streams))
	for i := range pending {
		pending[i] = i
	}
	for {
		left := pending[:0]
		for _, i := range pending {
			s := f.streams[i]
			s.mu.Lock()
			at, found := time.Time{}, false
			for _, a := range s.bundles {
				if !a.at.Before(since) && match(a.trustedCA) {
					at, found = a.at, true
					break
				}
			}
			err := s.err
			s.mu.Unlock()
			switch {
			case found:
				out[i] = at.Sub(since)
			case err != nil:
				return nil, fmt.Errorf("stream %d ended before it got the new root: %w", i, err)
			default:
				left = append(left, i)
			}
		}
		if pending = left; len(pending) == 0 {
			return out, nil
		}
		select {
		case <-f.changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d streams lack the new root: %w", len(pending), len(f.streams), ctx.Err())
		}
	}
}

// AwaitCertificate waits until every stream has received a new "default" certificate at or
// after since.
func (f *Fleet) AwaitCertificate(ctx context.Context, since time.Time) error {
	for {
		missing := 0
		for i, s := range f.streams {
			s.mu.Lock()
			at, err := s.chainAt, s.err
			s.mu.Unlock()
			if err != nil {
				return fmt.Errorf("stream %d ended before it got a new certificate: %w", i, err)
			}
			if at.Before(since) {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-f.changed:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d streams lack a new certificate: %w", missing, len(f.streams), ctx.Err())
		}
	}
}

// Close ends every stream and connection and waits for the receivers to stop.
func (f *Fleet) Close() error {
	f.cancel()
	var errs []error
	for _, c := range f.conns {
		errs = append(errs, c.Close())
	}
	f.wg.Wait()
	return errors.Join(errs...)
}

package sds

import (
	"context"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secretstore"
)

// Resuming a silent stream.
//
// MOSN's SDS client sends each resource name once. When its stream breaks (the agent restarted,
// or was upgraded) it opens a new one and waits, without asking again: it takes whatever
// responses arrive and stores each secret under its name. Envoy always asks first. A silent
// stream would otherwise be ended at the first-request deadline, reopened by MOSN and ended again,
// with the sidecar keeping a certificate that is never renewed or rotated.
//
// So a state-of-the-world stream whose connection already identifies the caller (a per-pod
// socket, or peer credentials) and that sends nothing for ResumeAfter is resumed: the agent
// answers the names that identity's streams asked for before (remembered across restarts by the
// agent's state; "default" and "ROOTCA", Istio's names, when it knows none), and then serves it
// like any stream, pushing every later change. A stream authenticated only by a token cannot be
// resumed: its token travels in its first request.

// DefaultResumeAfter is how long a silent stream is given to ask before it is resumed. Envoy and
// gRPC clients ask within milliseconds of opening a stream.
const DefaultResumeAfter = 2 * time.Second

// Remembered keeps, with each identity's certificate, the pods on this node that hold it and the
// resource names their streams asked for; *secrets.Manager implements it, and its state store
// keeps both across restarts. Implementations are safe for concurrent use.
type Remembered interface {
	Names(id spiffeid.ID) []string
	Hold(id spiffeid.ID, pod secretstore.Pod, names []string)
}

// hold records that caller's pod holds its identity, and the names it asked for.
func (s *Server) hold(caller identity.Caller, names []string) {
	if s.cfg.Remembered == nil {
		return
	}
	w := caller.Workload
	s.cfg.Remembered.Hold(caller.ID, secretstore.Pod{Namespace: w.Namespace, Name: w.PodName, UID: w.PodUID}, names)
}

// resumable reports whether a stream's connection identifies its caller without a request.
func (s *Server) resumable(ctx context.Context) bool {
	if s.cfg.ResumeAfter <= 0 || s.cfg.Peer == nil || s.cfg.Remembered == nil {
		return false
	}
	p := s.cfg.Peer(ctx)
	return p.SocketPod != nil || (s.cfg.PeerIdentifies && p.PodUID != "" && p.Err == nil)
}

// resumeRequest stands for the request a resumed stream never sent.
var resumeRequest = &discovery.DiscoveryRequest{}

// resumingRecv wraps a SotW stream's recv: its first call waits up to ResumeAfter for the
// stream's first request and returns resumeRequest if none came (the request, when it comes, is
// returned by the next call). Only a stream whose connection identifies its caller is resumed.
func (s *Server) resumingRecv(ctx context.Context, recv func() (*discovery.DiscoveryRequest, error)) func() (*discovery.DiscoveryRequest, error) {
	if !s.resumable(ctx) {
		return recv
	}
	// The connection authenticated the stream: it no longer counts among the streams that have
	// not shown who they are (sdslimits), and is not ended for sending nothing.
	if s.cfg.Started != nil {
		s.cfg.Started(ctx)
	}
	type result struct {
		req *discovery.DiscoveryRequest
		err error
	}
	var pending chan result
	calls := 0
	return func() (*discovery.DiscoveryRequest, error) {
		calls++
		switch {
		case calls == 1:
			pending = make(chan result, 1)
			go func() { // ends with the stream at the latest
				r, err := recv()
				pending <- result{r, err}
			}()
			timer := time.NewTimer(s.cfg.ResumeAfter)
			defer timer.Stop()
			select {
			case r := <-pending:
				pending = nil
				return r.req, r.err
			case <-timer.C:
				return resumeRequest, nil
			}
		case pending != nil:
			r := <-pending
			pending = nil
			return r.req, r.err
		}
		return recv()
	}
}

// resumeNames are the names a resumed stream of caller is answered with.
func (s *Server) resumeNames(caller identity.Caller) []string {
	if names := s.cfg.Remembered.Names(caller.ID); len(names) > 0 {
		return names
	}
	return []string{DefaultName, RootCAName}
}

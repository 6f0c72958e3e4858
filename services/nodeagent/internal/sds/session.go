package sds

import (
	"context"
	"errors"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// request is what the SotW and delta request types have in common.
type request interface {
	GetNode() *core.Node
}

// errPeerLeft ends a stream without an error: the sidecar closed it.
var errPeerLeft = errors.New("peer closed the stream")

// session is an authenticated SDS stream: who is calling, what tells it about changes, and its
// incoming requests.
type session[R request] struct {
	caller identity.Caller
	sub    *secrets.Subscription
	reqs   <-chan R
	errc   <-chan error
}

// startSession waits for the first request, authenticates its caller and subscribes to the
// caller's secrets. The caller must call end.
func startSession[R request](ctx context.Context, s *Server, recv func() (R, error)) (*session[R], R, error) {
	var zero R
	reqs, errc := receive(ctx, recv)
	ss := &session[R]{reqs: reqs, errc: errc}
	first, err := ss.wait(ctx, nil)
	if err != nil {
		return nil, zero, err
	}
	if ss.caller, err = s.authenticate(ctx, first.GetNode()); err != nil {
		return nil, zero, s.toStatus(err)
	}
	ss.sub = s.cfg.Secrets.Subscribe(ss.caller.ID)
	return ss, first, nil
}

func (ss *session[R]) end(s *Server) { s.cfg.Secrets.Unsubscribe(ss.sub) }

// wait returns the next request, or the zero request when what the stream watches changed
// (changes is nil before the stream is authenticated). It returns errPeerLeft when the stream ends.
func (ss *session[R]) wait(ctx context.Context, changes <-chan struct{}) (R, error) {
	var zero R
	select {
	case r := <-ss.reqs:
		return r, nil
	case <-changes:
		return zero, nil
	case err := <-ss.errc:
		if streamEnded(err) {
			return zero, errPeerLeft
		}
		return zero, err
	case <-ctx.Done():
		return zero, errPeerLeft
	}
}

// serveSession runs a stream: f answers the current state after each request (or change) and
// may return an error to end the stream with it.
func serveSession[R request](s *Server, ctx context.Context, recv func() (R, error), f func(caller identity.Caller, req R) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.cfg.Observe.StreamOpened()
	defer s.cfg.Observe.StreamClosed()
	ss, req, err := startSession(ctx, s, recv)
	if err != nil {
		return ignorePeerLeft(err)
	}
	defer ss.end(s)
	for {
		if err := f(ss.caller, req); err != nil {
			return err
		}
		if req, err = ss.wait(ctx, ss.sub.C); err != nil {
			return ignorePeerLeft(err)
		}
	}
}

func ignorePeerLeft(err error) error {
	if errors.Is(err, errPeerLeft) {
		return nil
	}
	return err
}

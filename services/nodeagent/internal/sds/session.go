package sds

import (
	"context"
	"errors"
	"sync"

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

// serveSession runs a stream: f answers the current state after each request, and after each
// change of what the stream watches (with the zero request); it may return an error to end the
// stream with it.
//
// A stream costs one goroutine, the handler's, blocked in recv: changes are pushed from the
// subscription's callback, under the session's lock (gRPC allows one sender beside one
// receiver). A push that fails cannot end the stream while the handler waits in recv, so its
// error ends the stream at the sidecar's next request (or the stream ends when the sidecar
// leaves); until then the sidecar keeps what it was last sent.
func serveSession[R request](s *Server, ctx context.Context, recv func() (R, error), f func(caller identity.Caller, req R) error) error {
	s.cfg.Observe.StreamOpened()
	defer s.cfg.Observe.StreamClosed()
	first, err := recv()
	if err != nil {
		return ignorePeerLeft(err)
	}
	caller, err := s.authenticate(ctx, first.GetNode())
	if err != nil {
		return s.toStatus(err)
	}
	if s.cfg.Callers != nil {
		release, err := s.cfg.Callers.AdmitCaller(caller.Workload.PodKey() + "/" + caller.Workload.PodUID)
		if err != nil {
			s.cfg.Logger.Warn("sds stream refused", "spiffe_id", caller.ID.String(), "pod", caller.Workload.PodKey(), "err", err)
			return err
		}
		defer release()
	}
	s.hold(caller, nil)
	var (
		mu      sync.Mutex
		ended   bool
		pushErr error
		zero    R
		sub     *secrets.Subscription
	)
	push := func() {
		mu.Lock()
		defer mu.Unlock()
		select {
		case <-sub.C: // taken before building: a change during the push pushes again
		default:
		}
		if ended || pushErr != nil {
			return
		}
		if err := f(caller, zero); err != nil {
			pushErr = err
			s.cfg.Logger.Warn("pushing an update failed; the stream ends at the sidecar's next request",
				"spiffe_id", caller.ID.String(), "err", err)
		}
	}
	mu.Lock() // a push can only start once sub is set
	sub = s.cfg.Secrets.SubscribeFunc(caller.ID, push)
	mu.Unlock()
	defer s.subscribeGateways(caller, push)()
	defer func() {
		s.cfg.Secrets.Unsubscribe(sub)
		mu.Lock()
		ended = true
		mu.Unlock()
	}()
	if s.cfg.KeySecrets != nil {
		defer s.cfg.KeySecrets.SubscribeFunc(push)()
	}
	for req := first; ; {
		mu.Lock()
		err := pushErr
		if err == nil {
			err = f(caller, req)
		}
		mu.Unlock()
		if err != nil {
			return err
		}
		if req, err = recv(); err != nil {
			if streamEnded(err) || ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

func ignorePeerLeft(err error) error {
	if errors.Is(err, errPeerLeft) || streamEnded(err) {
		return nil
	}
	return err
}

// Package sdslimits bounds what callers of the agent's SDS socket can hold open. A stream costs
// the agent a goroutine and buffers from the moment its headers arrive, long before its first
// request says who is calling, so without bounds anyone who can reach the socket could hold
// thousands of streams that never authenticate.
//
// Every stream and call on the socket passes, in order:
//
//   - HTTP/2: at most MaxStreamsPerConn (+1, see ServerOptions) concurrent streams per connection,
//     keepalive pings no more often than every 10s, connections without streams closed after 5m;
//   - the tap (when the headers arrive): a clear ResourceExhausted once the connection holds
//     MaxStreamsPerConn streams, or once MaxUnauthenticated streams agent-wide have not delivered
//     their first message;
//   - the first-request deadline: a stream that delivers no message within FirstRequestTimeout
//     ends with DeadlineExceeded;
//   - after authentication (sds.Server calls AdmitCaller): at most MaxStreamsPerCaller open
//     streams per pod.
//
// Every refusal is counted by reason (Observer).
package sdslimits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"k8s.io/utils/clock"
)

// Reasons of a refusal, as reported to Observer.
const (
	ReasonFirstRequestTimeout = "first_request_timeout"
	ReasonUnauthenticated     = "unauthenticated_streams"
	ReasonPerConnection       = "streams_per_connection"
	ReasonPerCaller           = "streams_per_caller"
)

// HTTP/2 settings that need no tuning per deployment.
const (
	// Clients may ping this often (Envoy and gRPC keepalives are 10s or more); faster pings end
	// the connection (GOAWAY ENHANCE_YOUR_CALM), so pings cannot be used to keep the agent busy.
	keepaliveMinTime = 10 * time.Second
	// A connection without any stream this long is closed; a sidecar reconnects when it needs to.
	maxConnectionIdle = 5 * time.Minute
	// An SDS request names at most 100 resources and carries a token and node metadata.
	maxRecvMsgSize = 1 << 20
)

// Observer is told about refusals and about the number of streams waiting for a first message.
// It must be safe for concurrent use and must not block (it is called from gRPC's transport).
type Observer interface {
	LimitRefused(reason string)
	Unauthenticated(delta int)
}

// Config sets the limits; every limit must be positive.
type Config struct {
	FirstRequestTimeout time.Duration
	MaxUnauthenticated  int
	MaxStreamsPerConn   int
	MaxStreamsPerCaller int
	Observer            Observer
	Logger              *slog.Logger
	Clock               clock.WithDelayedExecution // nil: the real clock
}

// Limiter enforces Config on one gRPC server. It is safe for concurrent use.
type Limiter struct {
	cfg    Config
	unauth atomic.Int64

	mu      sync.Mutex
	callers map[string]int
}

// New returns a Limiter.
func New(cfg Config) (*Limiter, error) {
	if cfg.FirstRequestTimeout <= 0 || cfg.MaxUnauthenticated <= 0 || cfg.MaxStreamsPerConn <= 0 || cfg.MaxStreamsPerCaller <= 0 {
		return nil, fmt.Errorf("sdslimits: every limit must be positive: %+v", cfg)
	}
	if cfg.Observer == nil || cfg.Logger == nil {
		return nil, errors.New("sdslimits: observer and logger are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Limiter{cfg: cfg, callers: map[string]int{}}, nil
}

// ServerOptions are the options that enforce the limits on a gRPC server.
func (l *Limiter) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		// One above the limit, so that a client's stream one too many reaches the tap and gets a
		// clear, counted refusal rather than waiting silently for a free slot; a client that
		// ignores the HTTP/2 setting is refused by the transport (REFUSED_STREAM) at this ceiling.
		grpc.MaxConcurrentStreams(uint32(l.cfg.MaxStreamsPerConn) + 1),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: maxConnectionIdle}),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
		grpc.StatsHandler(connTagger{}),
		grpc.InTapHandle(l.tap),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			// A unary handler runs once its request has arrived.
			if g := gateFrom(ctx); g != nil {
				g.arrived()
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if g := gateFrom(ss.Context()); g != nil {
				ss = &gatedStream{ServerStream: ss, gate: g}
			}
			return h(srv, ss)
		}),
	}
}

// AdmitCaller counts one more open stream of caller (a pod) and returns the function that
// uncounts it, or a ResourceExhausted error once the caller holds MaxStreamsPerCaller.
func (l *Limiter) AdmitCaller(caller string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.callers[caller]; n >= l.cfg.MaxStreamsPerCaller {
		l.cfg.Observer.LimitRefused(ReasonPerCaller)
		return nil, status.Errorf(codes.ResourceExhausted, "%s already holds %d streams (SDS and Workload API) on this agent, at most %d are allowed per pod",
			caller, n, l.cfg.MaxStreamsPerCaller)
	}
	l.callers[caller]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.callers[caller]--; l.callers[caller] <= 0 {
				delete(l.callers, caller)
			}
		})
	}, nil
}

// tap runs in gRPC's transport when a stream's headers arrive, under the transport's lock: it
// must not block. The context it returns is the stream's own, so cancelling it ends a Recv.
func (l *Limiter) tap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	conn, _ := ctx.Value(connKey{}).(*connState)
	if conn != nil {
		if n := conn.streams.Add(1); n > int64(l.cfg.MaxStreamsPerConn) {
			conn.streams.Add(-1)
			l.cfg.Observer.LimitRefused(ReasonPerConnection)
			return nil, status.Errorf(codes.ResourceExhausted, "this connection already holds %d streams, at most %d are allowed per connection; open another connection",
				n-1, l.cfg.MaxStreamsPerConn)
		}
	}
	if n := l.unauth.Add(1); n > int64(l.cfg.MaxUnauthenticated) {
		l.unauth.Add(-1)
		if conn != nil {
			conn.streams.Add(-1)
		}
		l.cfg.Observer.LimitRefused(ReasonUnauthenticated)
		return nil, status.Errorf(codes.ResourceExhausted, "%d streams on this agent have not sent their first request yet, at most %d are allowed; retry",
			n-1, l.cfg.MaxUnauthenticated)
	}
	l.cfg.Observer.Unauthenticated(1)
	stream := ctx
	ctx, cancel := context.WithCancelCause(stream)
	g := &gate{limiter: l}
	g.mu.Lock() // the timer may fire, or the stream end, before it is stored
	g.timer = l.cfg.Clock.AfterFunc(l.cfg.FirstRequestTimeout, func() {
		if g.expire() {
			l.cfg.Observer.LimitRefused(ReasonFirstRequestTimeout)
			cancel(errFirstRequestTimeout)
		}
	})
	g.mu.Unlock()
	// The transport cancels the stream's context when the stream ends, however it ends (and
	// registering on it, not on ctx, keeps one children map per stream instead of two).
	context.AfterFunc(stream, func() {
		g.arrived() // releases the unauthenticated slot if the first message never came
		if conn != nil {
			conn.streams.Add(-1)
		}
		cancel(nil)
	})
	return &expiringCtx{Context: ctx, gate: g}, nil
}

// expiringCtx is the stream's context: once the first-request deadline has passed, its Err is
// DeadlineExceeded, which is what gRPC reports to the client (with the generic message "context
// deadline exceeded") when a Recv ends because the context ended.
type expiringCtx struct {
	context.Context
	gate *gate
}

func (c *expiringCtx) Err() error {
	err := c.Context.Err()
	if err != nil && c.gate.expired.Load() {
		return context.DeadlineExceeded
	}
	return err
}

// Value also carries the gate, for the interceptors.
func (c *expiringCtx) Value(key any) any {
	if key == (gateKey{}) {
		return c.gate
	}
	return c.Context.Value(key)
}

var errFirstRequestTimeout = errors.New("no request within the first-request deadline")

// gate is one stream's wait for its first message.
type gate struct {
	limiter *Limiter
	timer   clock.Timer
	mu      sync.Mutex
	done    bool        // the first message arrived, the deadline passed or the stream ended
	expired atomic.Bool // the deadline passed first
}

// arrived ends the wait (once): the stream no longer counts as unauthenticated.
func (g *gate) arrived() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done {
		return
	}
	g.done = true
	g.timer.Stop()
	g.timer = nil // the gate lives as long as the stream; the timer need not
	g.limiter.unauth.Add(-1)
	g.limiter.cfg.Observer.Unauthenticated(-1)
}

// expire ends the wait at the deadline, unless the first message came first.
func (g *gate) expire() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done {
		return false
	}
	g.done = true
	g.expired.Store(true)
	g.limiter.unauth.Add(-1)
	g.limiter.cfg.Observer.Unauthenticated(-1)
	return true
}

type gateKey struct{}

// Started ends a stream's wait for its first request without one: the server has identified the
// caller by its connection and is serving the stream (a resumed SDS stream).
func Started(ctx context.Context) {
	if g := gateFrom(ctx); g != nil {
		g.arrived()
	}
}

func gateFrom(ctx context.Context) *gate {
	g, _ := ctx.Value(gateKey{}).(*gate)
	return g
}

// gatedStream marks its first message as arrived.
type gatedStream struct {
	grpc.ServerStream
	gate    *gate
	started bool
}

func (s *gatedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if !s.started && err == nil {
		s.started = true
		s.gate.arrived()
	}
	return err
}

// connState counts one connection's open streams.
type connState struct{ streams atomic.Int64 }

type connKey struct{}

// connTagger gives every connection its connState; gRPC derives each stream's context from the
// connection's, so the tap finds it there.
type connTagger struct{}

func (connTagger) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connKey{}, &connState{})
}
func (connTagger) HandleConn(context.Context, stats.ConnStats)                     {}
func (connTagger) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (connTagger) HandleRPC(context.Context, stats.RPCStats)                       {}

package events

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
)

// SubscriberConfig carries a subscriber's dependencies.
type SubscriberConfig struct {
	Conn        *nats.Conn
	TrustDomain spiffeid.TrustDomain
	// Client is the follower's own SPIFFE ID (the one it connected with): its consumers are
	// named after it, and Portcullis's NATS server lets it touch no others.
	Client spiffeid.ID
	// JSAPIPrefix is ConnConfig.JSAPIPrefix: empty means the guarded API for Client.
	JSAPIPrefix string
	Logger      *slog.Logger
	Clock       clock.Clock // nil means the real clock
	// Handle is called for each event of the trust domain, in stream order, one at a time. It
	// must not block for long: receivers queue slow work (fetches, re-issues) themselves.
	Handle func(ctx context.Context, e *eventsv1.Event)
	// Received, if set, is told of every message: its kind, or the reason it was skipped.
	Received func(kind string, err error)
}

// Subscriber follows the event stream from the moment it first subscribes. After a disconnect or
// a NATS restart it resumes after the last event it handled, so nothing published meanwhile is
// missed while JetStream keeps it (StreamMaxAge).
type Subscriber struct {
	cfg      SubscriberConfig
	instance string // names this process's consumers (events.Scope.ConsumerPrefix)
	started  chan struct{}
	once     sync.Once
}

// NewSubscriber prepares a subscriber; Run follows the stream.
func NewSubscriber(cfg SubscriberConfig) *Subscriber {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Received == nil {
		cfg.Received = func(string, error) {}
	}
	return &Subscriber{cfg: cfg, instance: nuid.Next(), started: make(chan struct{})}
}

// Started is closed once the subscriber first follows the stream: events published from then on
// reach Handle.
func (s *Subscriber) Started() <-chan struct{} { return s.started }

// Run follows the stream until ctx ends. Failures (NATS down, stream not created yet) are retried
// with backoff and never end Run.
func (s *Subscriber) Run(ctx context.Context) error {
	if s.cfg.Client.IsZero() {
		return errors.New("events subscriber: no client identity (SubscriberConfig.Client)")
	}
	scope := ScopeOf(s.cfg.Client)
	prefix := s.cfg.JSAPIPrefix
	if prefix == "" {
		prefix = scope.GuardedAPIPrefix()
	}
	js, err := jetstream.NewWithAPIPrefix(s.cfg.Conn, prefix)
	if err != nil {
		return err
	}
	var (
		last  uint64 // stream sequence of the last message handled (or of the stream's end at start)
		known bool   // last has been set
	)
	retry := backoff{min: 200 * time.Millisecond, max: 10 * time.Second}
	for ctx.Err() == nil {
		var err error
		if !known {
			// Start after the stream's current end, by sequence rather than "deliver new": a
			// consumer recreated after a NATS restart then resumes from there, instead of
			// skipping what was published while it was away.
			last, err = streamEnd(ctx, js)
			known = err == nil
		}
		if known {
			cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: last + 1,
				InactiveThreshold: time.Minute, NamePrefix: scope.ConsumerPrefix(s.instance)}
			err = s.follow(ctx, js, cfg, &last, &retry)
		}
		if ctx.Err() != nil {
			return nil
		}
		delay := retry.next()
		s.cfg.Logger.Warn("following rotation events failed; retrying", "err", err, "retry_in", delay, "resume_after", last)
		if !sleep(ctx, s.cfg.Clock, delay) {
			return nil
		}
	}
	return nil
}

func streamEnd(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, Stream)
	if err != nil {
		return 0, err
	}
	return st.CachedInfo().State.LastSeq, nil
}

func (s *Subscriber) follow(ctx context.Context, js jetstream.JetStream, cfg jetstream.OrderedConsumerConfig, last *uint64, retry *backoff) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	cons, err := js.OrderedConsumer(cctx, Stream, cfg)
	cancel()
	if err != nil {
		return err
	}
	// A short pull expiry makes the heartbeats frequent, so a NATS restart is noticed (and the
	// consumer recreated where it left off) within seconds.
	it, err := cons.Messages(jetstream.PullExpiry(5 * time.Second))
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	s.once.Do(func() { close(s.started) })
	s.cfg.Logger.Info("following rotation events", "stream", Stream, "resume_after", *last)
	retry.reset()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		if meta, err := msg.Metadata(); err == nil {
			*last = meta.Sequence.Stream
		}
		e, err := Decode(msg.Subject(), msg.Data())
		if err != nil {
			s.cfg.Received("malformed", err)
			s.cfg.Logger.Warn("skipping an event", "err", err)
			continue
		}
		if e.GetTrustDomain() != s.cfg.TrustDomain.Name() {
			s.cfg.Received(Kind(e), errors.New("other trust domain"))
			continue
		}
		s.cfg.Received(Kind(e), nil)
		s.cfg.Handle(ctx, e)
	}
}

// FollowConfig is what a service needs to follow the events with its own identity.
type FollowConfig struct {
	Conn       ConnConfig
	Identity   *servicetls.Identity
	Name       string // the NATS connection name, for the server's logs
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Handle     func(ctx context.Context, e *eventsv1.Event)
}

// Follow connects to NATS and returns a Run that follows the stream until ctx ends, then closes
// the connection. Received events are counted on Registerer (MetricReceived).
func Follow(cfg FollowConfig) (run func(ctx context.Context) error, err error) {
	received, err := ReceivedCounter(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	nc, err := Connect(cfg.Conn, cfg.Identity, cfg.Name, cfg.Logger)
	if err != nil {
		return nil, err
	}
	sub := NewSubscriber(SubscriberConfig{Conn: nc, TrustDomain: cfg.Identity.TrustDomain(), Client: cfg.Identity.ID(),
		JSAPIPrefix: cfg.Conn.JSAPIPrefix, Logger: cfg.Logger,
		Handle: cfg.Handle, Received: received})
	return func(ctx context.Context) error {
		defer nc.Close()
		return sub.Run(ctx)
	}, nil
}

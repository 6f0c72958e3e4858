package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/utils/clock"

	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
)

// maxQueued bounds the events held while NATS is unreachable. Beyond it the oldest are dropped
// (and counted): receivers' own renewal timers cover what a lost hint would have sped up.
const maxQueued = 100_000

// PublisherConfig carries a publisher's dependencies.
type PublisherConfig struct {
	Conn        *nats.Conn
	TrustDomain spiffeid.TrustDomain
	Logger      *slog.Logger
	Clock       clock.Clock // nil means the real clock
	// StreamMaxAge is how long JetStream keeps events for receivers that were away; 0 means 7 days.
	StreamMaxAge time.Duration
	// Published, if set, is told the outcome of every event: err is nil once JetStream stored it.
	Published func(kind string, err error)
}

// Publisher publishes events in order, holding them while NATS or the stream is unavailable, so
// that an outage delays events but loses none. It is safe for concurrent use.
type Publisher struct {
	cfg  PublisherConfig
	js   jetstream.JetStream
	wake chan struct{}

	mu      sync.Mutex
	queue   []*eventsv1.Event
	lastSeq uint64
}

// NewPublisher prepares a publisher; Run delivers what Publish queues.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.StreamMaxAge == 0 {
		cfg.StreamMaxAge = defaultStreamMaxAge
	}
	if cfg.Published == nil {
		cfg.Published = func(string, error) {}
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Publisher{cfg: cfg, js: js, wake: make(chan struct{}, 1)}, nil
}

// Publish stamps e (schema version, sequence, id, time, trust domain), queues it and returns its
// sequence. It never blocks on NATS.
func (p *Publisher) Publish(e *eventsv1.Event) uint64 {
	now := p.cfg.Clock.Now()
	p.mu.Lock()
	// Nanoseconds since the epoch keep the sequence increasing across restarts without storing it.
	p.lastSeq = max(p.lastSeq+1, uint64(now.UnixNano()))
	e.SchemaVersion = SchemaVersion
	e.Sequence = p.lastSeq
	e.Id = p.cfg.TrustDomain.Name() + "-" + strconv.FormatUint(p.lastSeq, 10)
	e.Time = timestamppb.New(now)
	e.TrustDomain = p.cfg.TrustDomain.Name()
	if len(p.queue) >= maxQueued {
		dropped := p.queue[0]
		p.queue = p.queue[1:]
		p.cfg.Published(Kind(dropped), errors.New("queue full"))
		p.cfg.Logger.Error("event queue full while nats is unreachable; dropped the oldest event",
			"kind", Kind(dropped), "sequence", dropped.GetSequence())
	}
	p.queue = append(p.queue, e)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return e.GetSequence()
}

// Run makes sure the stream exists, then delivers queued events in order until ctx ends. A
// failure is retried with backoff; it never ends Run.
func (p *Publisher) Run(ctx context.Context) error {
	retry := backoff{min: 200 * time.Millisecond, max: 15 * time.Second}
	for !p.ensureStream(ctx) {
		if !sleep(ctx, p.cfg.Clock, retry.next()) {
			return nil
		}
	}
	retry.reset()
	for {
		p.mu.Lock()
		var next *eventsv1.Event
		if len(p.queue) > 0 {
			next = p.queue[0]
		}
		p.mu.Unlock()
		if next == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-p.wake:
				continue
			}
		}
		if err := p.send(ctx, next); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			delay := retry.next()
			p.cfg.Logger.Warn("publishing event failed; retrying", "kind", Kind(next), "sequence", next.GetSequence(),
				"err", err, "retry_in", delay)
			if !sleep(ctx, p.cfg.Clock, delay) {
				return nil
			}
			continue
		}
		retry.reset()
		p.mu.Lock()
		p.queue = p.queue[1:]
		p.mu.Unlock()
	}
}

// Pending is the number of events not yet stored by JetStream.
func (p *Publisher) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

func (p *Publisher) send(ctx context.Context, e *eventsv1.Event) error {
	subject, err := Subject(e)
	if err != nil {
		return err
	}
	data, err := proto.Marshal(e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// The id makes a retry after a lost acknowledgement harmless: JetStream drops the duplicate.
	_, err = p.js.Publish(ctx, subject, data, jetstream.WithMsgID(e.GetId()), jetstream.WithExpectStream(Stream))
	p.cfg.Published(Kind(e), err)
	if err == nil {
		p.cfg.Logger.Info("event published", "kind", Kind(e), "subject", subject, "sequence", e.GetSequence())
	}
	return err
}

func (p *Publisher) ensureStream(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := p.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "Portcullis rotation events (portcullis.events.v1)",
		Subjects:    []string{SubjectAll},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      p.cfg.StreamMaxAge,
		Duplicates:  defaultDuplicatesWindow,
		Discard:     jetstream.DiscardOld,
		// No consumer outlives its follower: even on an external NATS server, whose permissions
		// cannot refuse a durable consumer, one is removed after this long without a pull.
		ConsumerLimits: jetstream.StreamConsumerLimits{InactiveThreshold: MaxConsumerInactivity},
	})
	if err != nil && ctx.Err() == nil {
		p.cfg.Logger.Warn("creating the event stream failed; retrying", "stream", Stream, "err", err)
	}
	return err == nil
}

// backoff doubles from min to max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d on clk; false if ctx ended first.
func sleep(ctx context.Context, clk clock.Clock, d time.Duration) bool {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

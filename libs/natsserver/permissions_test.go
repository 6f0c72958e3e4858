package natsserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/natsserver"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

// What a node agent's own certificate must not let it do (issue 10, defect 5), each tried the way
// an attacker would: with a raw NATS client, not with Portcullis's own code.

// attackEnv runs the server, a publisher, and a victim (node-b's agent) that follows the stream.
type attackEnv struct {
	*env
	ctx      context.Context
	s        *natsserver.Server
	pub      *events.Publisher
	admin    jetstream.JetStream // kms-adapter's view, to see what the attacker changed
	victim   *follower
	victimID *servicetls.Identity
	attacker *servicetls.Identity // node-a's agent
}

func newAttackEnv(t *testing.T) *attackEnv {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := e.start("127.0.0.1:0")
	kms := e.connect(s, e.service(servicetls.KMSAdapter))
	pub := publisher(t, ctx, e, kms)
	pub.Publish(bundleEvent(1))
	waitFor(t, "the stream", func() bool { return pub.Pending() == 0 })
	admin, err := jetstream.New(kms)
	if err != nil {
		t.Fatal(err)
	}
	victimID := e.identity("node-b", nodeAgent("node-b"))
	return &attackEnv{env: e, ctx: ctx, s: s, pub: pub, admin: admin, victimID: victimID,
		victim: e.follow(ctx, s, victimID), attacker: e.identity("node-a", nodeAgent("node-a"))}
}

func nodeAgent(node string) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "portcullis", servicetls.NodeAgent, node)
}

// dial connects as id with a plain client: default inbox prefix, no guard.
func (a *attackEnv) dial(id *servicetls.Identity) *nats.Conn {
	a.t.Helper()
	nc, err := nats.Connect(a.s.URL(), nats.Secure(id.ClientTLS(spiffeid.RequireFromSegments(td, "portcullis", servicetls.KMSAdapter))),
		nats.PermissionErrOnSubscribe(true), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(nc.Close)
	return nc
}

func (a *attackEnv) consumers() []string {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
	defer cancel()
	st, err := a.admin.Stream(ctx, events.Stream)
	if err != nil {
		a.t.Fatal(err)
	}
	var names []string
	l := st.ConsumerNames(ctx)
	for n := range l.Name() {
		names = append(names, n)
	}
	if l.Err() != nil {
		a.t.Fatal(l.Err())
	}
	return names
}

// victimStillFollows publishes an event and waits for the victim to get it.
func (a *attackEnv) victimStillFollows(version uint64) {
	a.t.Helper()
	a.pub.Publish(bundleEvent(version))
	waitFor(a.t, "the victim to get the next event", func() bool {
		return slices.Contains(a.victim.versions(), version)
	})
}

func TestNodeAgentCannotReadOtherInboxes(t *testing.T) {
	a := newAttackEnv(t)
	nc := a.dial(a.attacker)
	for _, subject := range []string{"_INBOX.>", events.ScopeOf(a.victimID.ID()).InboxPrefix() + ".>", ">", "_INBOX_*.>"} {
		sub, err := nc.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(5 * time.Second); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("subscribing to %s: err = %v, want a permissions violation", subject, err)
		}
	}
	a.victimStillFollows(2)
}

// guarded is the attacker's JetStream API through the guard, under its own token.
func (a *attackEnv) guarded(nc *nats.Conn, id *servicetls.Identity) jetstream.JetStream {
	js, err := jetstream.NewWithAPIPrefix(nc, events.ScopeOf(id.ID()).GuardedAPIPrefix())
	if err != nil {
		a.t.Fatal(err)
	}
	return js
}

// call runs f with its own deadline: a request the server never answers (a permissions
// violation) must not eat the time of the next one.
func (a *attackEnv) call(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(a.ctx, 2*time.Second)
	defer cancel()
	return f(ctx)
}

func TestNodeAgentCannotCreateDurableOrPushConsumers(t *testing.T) {
	a := newAttackEnv(t)
	own := events.ScopeOf(a.attacker.ID()).ConsumerPrefix("spy") + "_1"
	before := a.consumers()

	// Straight at $JS.API, as a durable: not permitted at all.
	direct, err := jetstream.New(a.dial(a.attacker))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.call(func(ctx context.Context) error {
		_, err := direct.CreateConsumer(ctx, events.Stream, jetstream.ConsumerConfig{Durable: "spy"})
		return err
	}); err == nil {
		t.Error("a node agent created a durable consumer through $JS.API")
	}

	// Through the guard, on its own consumer name: refused by what the consumer would be.
	js := a.guarded(a.withInbox(a.attacker), a.attacker)
	for name, cfg := range map[string]jetstream.ConsumerConfig{
		"durable":        {Durable: own, AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute},
		"push":           {Name: own, DeliverSubject: "portcullis.spy", AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute},
		"never inactive": {Name: own, AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true},
		"other subjects": {Name: own, AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute,
			FilterSubjects: []string{"portcullis.events.bundle", "$JS.>"}},
	} {
		err := a.call(func(ctx context.Context) error { _, err := js.CreateConsumer(ctx, events.Stream, cfg); return err })
		if err == nil || !strings.Contains(err.Error(), "refused by portcullis") {
			t.Errorf("%s consumer through the guard: err = %v, want a refusal", name, err)
		}
	}
	if after := a.consumers(); !slices.Equal(before, after) {
		t.Errorf("consumers %v after the attempts, want %v", after, before)
	}
	a.victimStillFollows(2)
}

// withInbox connects as id with its own inbox prefix, as events.Connect does.
func (a *attackEnv) withInbox(id *servicetls.Identity) *nats.Conn {
	a.t.Helper()
	nc, err := nats.Connect(a.s.URL(), nats.Secure(id.ClientTLS(spiffeid.RequireFromSegments(td, "portcullis", servicetls.KMSAdapter))),
		nats.CustomInboxPrefix(events.ScopeOf(id.ID()).InboxPrefix()), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(nc.Close)
	return nc
}

func TestNodeAgentCannotTouchOtherFollowersConsumers(t *testing.T) {
	a := newAttackEnv(t)
	victims := a.consumers()
	if len(victims) != 1 || !events.ScopeOf(a.victimID.ID()).OwnsConsumer(victims[0]) {
		t.Fatalf("consumers %v, want the victim's one", victims)
	}
	victim := victims[0]

	direct, err := jetstream.New(a.dial(a.attacker))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.call(func(ctx context.Context) error { return direct.DeleteConsumer(ctx, events.Stream, victim) }); err == nil {
		t.Error("a node agent deleted another follower's consumer through $JS.API")
	}
	js := a.guarded(a.withInbox(a.attacker), a.attacker)
	if err := a.call(func(ctx context.Context) error { return js.DeleteConsumer(ctx, events.Stream, victim) }); err == nil || !strings.Contains(err.Error(), "refused by portcullis") {
		t.Errorf("deleting the victim's consumer through the guard: err = %v, want a refusal", err)
	}
	// Pulling from it would take the victim's events (ack none: a pulled event is gone for it).
	if err := a.call(func(ctx context.Context) error { _, err := js.Consumer(ctx, events.Stream, victim); return err }); err == nil || !strings.Contains(err.Error(), "refused by portcullis") {
		t.Errorf("looking up the victim's consumer through the guard: err = %v, want a refusal", err)
	}
	// Updating it (a create on its name) could change what it delivers.
	err = a.call(func(ctx context.Context) error {
		_, err := js.CreateOrUpdateConsumer(ctx, events.Stream, jetstream.ConsumerConfig{Name: victim, AckPolicy: jetstream.AckNonePolicy,
			MemoryStorage: true, InactiveThreshold: time.Second, FilterSubject: "portcullis.events.none"})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "refused by portcullis") {
		t.Errorf("updating the victim's consumer through the guard: err = %v, want a refusal", err)
	}
	// A token that is not the attacker's own is not even publishable.
	other := a.guarded(a.withInbox(a.attacker), a.victimID)
	if err := a.call(func(ctx context.Context) error { return other.DeleteConsumer(ctx, events.Stream, victim) }); err == nil {
		t.Error("a node agent used another identity's guarded api")
	}
	if got := a.consumers(); !slices.Equal(got, victims) {
		t.Errorf("consumers %v after the attempts, want %v", got, victims)
	}
	a.victimStillFollows(2)
}

// A pull request whose reply subject is not the sender's inbox would have JetStream deliver
// events wherever the attacker likes: into another client's inbox, or back into the stream.
func TestGuardDropsForeignReplySubjects(t *testing.T) {
	a := newAttackEnv(t)
	nc := a.withInbox(a.attacker)
	scope := events.ScopeOf(a.attacker.ID())
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
	defer cancel()
	js := a.guarded(nc, a.attacker)
	cons, err := js.OrderedConsumer(ctx, events.Stream, jetstream.OrderedConsumerConfig{NamePrefix: scope.ConsumerPrefix("spy"),
		DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: time.Minute})
	if err != nil {
		t.Fatalf("an ordered consumer of its own: %v", err)
	}
	name := cons.CachedInfo().Name
	// Another client's inbox: kms-adapter's, which the test can watch.
	kms := a.withInbox(a.service(servicetls.KMSAdapter))
	victimInbox := events.ScopeOf(spiffeid.RequireFromSegments(td, "portcullis", servicetls.KMSAdapter)).InboxPrefix() + ".probe"
	probe, err := kms.SubscribeSync(victimInbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := kms.Flush(); err != nil {
		t.Fatal(err)
	}
	next, _ := json.Marshal(map[string]any{"batch": 10, "expires": time.Second})
	if err := nc.PublishRequest(scope.GuardedAPIPrefix()+".CONSUMER.MSG.NEXT."+events.Stream+"."+name, victimInbox, next); err != nil {
		t.Fatal(err)
	}
	// The guard handles requests in order: once this one is answered, the forged one was handled.
	if _, err := js.Stream(ctx, events.Stream); err != nil {
		t.Fatal(err)
	}
	// Had it been passed on, JetStream would deliver the stored event at once; give it that long.
	if m, err := probe.NextMsg(500 * time.Millisecond); err == nil {
		t.Errorf("a pull request delivered %q into another client's inbox", m.Data)
	}
	a.victimStillFollows(2)
}

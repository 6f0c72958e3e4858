package natsserver_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/natsserver"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

type env struct {
	t     *testing.T
	ca    *servicetls.BootstrapCA
	dir   string
	store string
	log   *slog.Logger
}

func newEnv(t *testing.T) *env {
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return &env{t: t, ca: ca, dir: dir, store: filepath.Join(dir, "js"), log: slog.New(slog.NewTextHandler(testWriter(t), nil))}
}

func (e *env) identity(name string, id spiffeid.ID) *servicetls.Identity {
	e.t.Helper()
	f, err := e.ca.Issue(filepath.Join(e.dir, "certs"), name, id, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	ident, err := servicetls.Load(f)
	if err != nil {
		e.t.Fatal(err)
	}
	return ident
}

func (e *env) service(name string) *servicetls.Identity {
	return e.identity(name, spiffeid.RequireFromSegments(td, "portcullis", name))
}

func (e *env) start(listen string) *natsserver.Server {
	e.t.Helper()
	s, err := natsserver.Start(natsserver.Config{Listen: listen, StoreDir: e.store, Identity: e.service(servicetls.KMSAdapter), Logger: e.log})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(s.Shutdown)
	return s
}

func (e *env) connect(s *natsserver.Server, id *servicetls.Identity) *nats.Conn {
	e.t.Helper()
	nc, err := events.Connect(events.ConnConfig{URL: s.URL()}, id, "test", e.log)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

func bundleEvent(version uint64) *eventsv1.Event {
	return &eventsv1.Event{Kind: &eventsv1.Event_TrustBundleChanged{TrustBundleChanged: &eventsv1.TrustBundleChanged{BundleVersion: version}}}
}

// follower collects what a subscriber hands it.
type follower struct {
	mu  sync.Mutex
	got []*eventsv1.Event
	sub *events.Subscriber
}

// follow connects as id and follows the stream.
func (e *env) follow(ctx context.Context, s *natsserver.Server, id *servicetls.Identity) *follower {
	f := &follower{}
	f.sub = events.NewSubscriber(events.SubscriberConfig{Conn: e.connect(s, id), TrustDomain: td, Client: id.ID(), Logger: e.log,
		Handle: func(_ context.Context, ev *eventsv1.Event) { f.mu.Lock(); f.got = append(f.got, ev); f.mu.Unlock() }})
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.sub.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	select {
	case <-f.sub.Started():
	case <-time.After(10 * time.Second):
		e.t.Fatal("subscriber did not start")
	}
	return f
}

func (f *follower) versions() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var v []uint64
	for _, e := range f.got {
		v = append(v, e.GetTrustBundleChanged().GetBundleVersion())
	}
	return v
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func publisher(t *testing.T, ctx context.Context, e *env, nc *nats.Conn) *events.Publisher {
	p, err := events.NewPublisher(events.PublisherConfig{Conn: nc, TrustDomain: td, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func TestEventsReachFollowersInOrder(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := e.start("127.0.0.1:0")
	pub := publisher(t, ctx, e, e.connect(s, e.service(servicetls.KMSAdapter)))
	pub.Publish(bundleEvent(0)) // creates the stream before anyone follows
	waitFor(t, "the first event to be stored", func() bool { return pub.Pending() == 0 })

	agent := e.follow(ctx, s, e.identity("agent", spiffeid.RequireFromSegments(td, "portcullis", "nodeagent", "node-a")))
	// Two citadel replicas share an identity; each must still get every event.
	citadelID := e.service(servicetls.Citadel)
	citadel, replica := e.follow(ctx, s, citadelID), e.follow(ctx, s, citadelID)
	for v := uint64(1); v <= 3; v++ {
		pub.Publish(bundleEvent(v))
	}
	for _, f := range []*follower{agent, citadel, replica} {
		waitFor(t, "three events", func() bool { return len(f.versions()) == 3 })
		if got := f.versions(); got[0] != 1 || got[1] != 2 || got[2] != 3 {
			t.Errorf("versions %v, want [1 2 3] (followers start at subscription time, in order)", got)
		}
	}
}

func TestOnlyKMSAdapterMayPublish(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := e.start("127.0.0.1:0")
	pub := publisher(t, ctx, e, e.connect(s, e.service(servicetls.KMSAdapter)))
	pub.Publish(bundleEvent(1))
	waitFor(t, "the stream", func() bool { return pub.Pending() == 0 })
	agentID := e.identity("agent", spiffeid.RequireFromSegments(td, "portcullis", "nodeagent", "node-a"))
	victim := e.follow(ctx, s, e.service(servicetls.Citadel))

	forger := e.connect(s, agentID)
	js, err := jetstream.New(forger)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(&eventsv1.Event{SchemaVersion: events.SchemaVersion, TrustDomain: td.Name(),
		Kind: &eventsv1.Event_TrustBundleChanged{TrustBundleChanged: &eventsv1.TrustBundleChanged{BundleVersion: 99}}})
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	if _, err := js.Publish(pctx, events.SubjectBundle, data); err == nil {
		t.Fatal("a node agent published an event")
	}
	if err := js.DeleteStream(pctx, events.Stream); err == nil {
		t.Fatal("a node agent deleted the event stream")
	}
	pub.Publish(bundleEvent(2))
	waitFor(t, "the real event", func() bool { return len(victim.versions()) == 1 })
	if got := victim.versions(); got[0] != 2 {
		t.Errorf("follower got %v, want only the real event [2]", got)
	}
}

func TestClientsWithoutARecognisedIdentityAreRefused(t *testing.T) {
	e := newEnv(t)
	s := e.start("127.0.0.1:0")
	for name, id := range map[string]spiffeid.ID{
		"mcp-sync": spiffeid.RequireFromSegments(td, "portcullis", servicetls.MCPSync),
		"workload": spiffeid.RequireFromPath(td, "/ns/default/sa/web"),
	} {
		ident := e.identity(name, id)
		_, err := nats.Connect(s.URL(), nats.Secure(ident.ClientTLS(spiffeid.RequireFromSegments(td, "portcullis", servicetls.KMSAdapter))))
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: connect err = %v, want an authorization violation", name, err)
		}
	}
	ident := e.service(servicetls.Citadel)
	noCert := ident.ClientTLS(spiffeid.RequireFromSegments(td, "portcullis", servicetls.KMSAdapter))
	noCert.GetClientCertificate = nil
	if _, err := nats.Connect(s.URL(), nats.Secure(noCert)); err == nil {
		t.Error("a client without a certificate connected")
	}
}

// An outage of NATS delays events but loses none: the publisher holds them, the follower resumes
// after the last one it handled.
func TestOutageDelaysButLosesNothing(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := e.start("127.0.0.1:0")
	addr := s.URL()[len("tls://"):]
	pub := publisher(t, ctx, e, e.connect(s, e.service(servicetls.KMSAdapter)))
	pub.Publish(bundleEvent(1))
	waitFor(t, "the stream", func() bool { return pub.Pending() == 0 })
	// Both kinds of follower, each confined to its own inbox and consumers by the guard.
	followers := []*follower{
		e.follow(ctx, s, e.service(servicetls.Citadel)),
		e.follow(ctx, s, e.identity("agent", spiffeid.RequireFromSegments(td, "portcullis", "nodeagent", "node-a"))),
	}
	pub.Publish(bundleEvent(2))
	for _, f := range followers {
		waitFor(t, "event 2", func() bool { return len(f.versions()) == 1 })
	}

	s.Shutdown()
	pub.Publish(bundleEvent(3))
	pub.Publish(bundleEvent(4))
	if pub.Pending() != 2 {
		t.Fatalf("pending = %d while nats is down, want 2", pub.Pending())
	}
	waitForPort(t, addr)
	e.start(addr)
	for _, f := range followers {
		waitFor(t, "events 3 and 4 after the outage", func() bool { return len(f.versions()) == 3 })
		if got := f.versions(); got[1] != 3 || got[2] != 4 {
			t.Errorf("versions %v, want [2 3 4]", got)
		}
	}
}

func waitForPort(t *testing.T, addr string) {
	waitFor(t, "the port to be free", func() bool {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		l.Close()
		return true
	})
}

type tw struct{ t *testing.T }

func (w tw) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func testWriter(t *testing.T) io.Writer {
	if testing.Verbose() {
		return tw{t}
	}
	return io.Discard
}

package app_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/app"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/config"
)

// runApp runs kms-adapter with cfg and returns its listeners' addresses and a stop function (also
// called when the test ends).
func runApp(t *testing.T, cfg config.Config, want ...string) (map[string]string, func()) {
	t.Helper()
	sink := &closableRecords{ch: make(records, 1000)}
	logs := sink.ch
	a, err := app.New(t.Context(), cfg, slog.New(slog.NewJSONHandler(sink, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			sink.close()
		})
	}
	t.Cleanup(stop)
	addrs := map[string]string{}
	deadline := time.After(10 * time.Second)
	for len(addrs) < len(want) {
		select {
		case rec := <-logs:
			if rec["msg"] == lifecycle.ListeningMsg {
				addrs[rec["listener"].(string)] = rec["addr"].(string)
			}
		case <-deadline:
			t.Fatalf("listeners not announced; got %v", addrs)
		}
	}
	go func() {
		for range logs { // keep the logger from blocking
		}
	}()
	return addrs, stop
}

// closableRecords is records that drops what is logged after close: the NATS connection logs its
// closing after Run has returned.
type closableRecords struct {
	mu     sync.Mutex
	closed bool
	ch     records
}

func (c *closableRecords) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return len(p), nil
	}
	return c.ch.Write(p)
}

func (c *closableRecords) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	close(c.ch)
}

func dial(t *testing.T, files servicetls.Files, addr string) *grpc.ClientConn {
	t.Helper()
	id, err := servicetls.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	serverID, _ := servicetls.ServiceID(td, servicetls.KMSAdapter)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(id.ClientCredentials(serverID)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// A JWT key rotation step taken over the admin API reaches a follower of the event stream (on the
// embedded NATS) as JWTBundleChanged with the new bundle version, and the keys survive a restart.
func TestJWTKeyRotationIsAnnouncedAndKeysSurviveARestart(t *testing.T) {
	cfg, citadelFiles, _, ca, dir := setupCA(t)
	cfg.NATSEmbedded, cfg.NATSListen, cfg.NATSStoreDir = true, "127.0.0.1:0", t.TempDir()
	adminID, _ := servicetls.ServiceID(td, servicetls.Admin)
	adminFiles, err := ca.Issue(dir, "admin", adminID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	addrs, stop := runApp(t, cfg, "grpc", "admin", "nats")

	citadel, err := servicetls.Load(citadelFiles)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *eventsv1.JWTBundleChanged, 10)
	followerLogs := &closableRecords{ch: make(records, 1000)}
	t.Cleanup(followerLogs.close)
	follow, err := events.Follow(events.FollowConfig{Conn: events.ConnConfig{URL: "tls://" + addrs["nats"]}, Identity: citadel,
		Name: "citadel", Logger: slog.New(slog.NewJSONHandler(followerLogs, nil)), Registerer: prometheus.NewRegistry(),
		Handle: func(_ context.Context, e *eventsv1.Event) {
			if j := e.GetJwtBundleChanged(); j != nil {
				got <- j
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	followed := make(chan error, 1)
	go func() { followed <- follow(ctx) }()
	stopFollowing := sync.OnceFunc(func() {
		cancel()
		<-followed
	})
	t.Cleanup(stopFollowing)
	// The follower starts after the stream's end: wait until it follows, or the event may precede it.
	for following := false; !following; {
		select {
		case rec := <-followerLogs.ch:
			following = rec["msg"] == "following rotation events"
		case <-time.After(30 * time.Second):
			t.Fatal("the follower never followed the stream")
		}
	}
	go func() {
		for range followerLogs.ch {
		}
	}()

	jwt := kmsv1.NewJWTServiceClient(dial(t, citadelFiles, addrs["grpc"]))
	tok, err := jwt.SignJWTSVID(t.Context(), &kmsv1.SignJWTSVIDRequest{SpiffeId: "spiffe://cluster.local/ns/a/sa/b", Audiences: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := kmsv1.NewKMSAdminServiceClient(dial(t, adminFiles, addrs["grpc"])).RotateJWTKey(t.Context(),
		&kmsv1.RotateJWTKeyRequest{Step: kmsv1.RotationStep_ROTATION_STEP_PREPARE})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		if ev.GetBundleVersion() != st.GetBundleVersion() {
			t.Fatalf("event announces version %d, the rotation made %d", ev.GetBundleVersion(), st.GetBundleVersion())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no JWTBundleChanged event")
	}

	// Restarted on the same state directory, kms-adapter serves the same keys.
	stopFollowing()
	stop()
	again, _ := runApp(t, cfg, "grpc", "admin", "nats")
	resp, err := kmsv1.NewJWTServiceClient(dial(t, citadelFiles, again["grpc"])).GetJWTBundle(t.Context(), &kmsv1.GetJWTBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersion() != st.GetBundleVersion() {
		t.Fatalf("restarted bundle version %d, want %d", resp.GetVersion(), st.GetBundleVersion())
	}
	b, err := jwtbundle.Parse(td, resp.GetJwks())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok.GetToken(), b, []string{"x"}); err != nil {
		t.Fatalf("a token signed before the restart: %v", err)
	}
}

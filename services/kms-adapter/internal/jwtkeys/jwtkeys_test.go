package jwtkeys_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/jwtkeys"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	workload = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
)

var discard = slog.New(slog.DiscardHandler)

const (
	keyTTL   = 24 * time.Hour
	maxToken = time.Hour
)

type fixture struct {
	dir    string
	clock  *clocktesting.FakeClock
	mu     sync.Mutex
	events []jwtkeys.Event
}

func newFixture(t *testing.T) *fixture {
	return &fixture{dir: filepath.Join(t.TempDir(), "jwt"), clock: clocktesting.NewFakeClock(time.Now())}
}

func (f *fixture) open(t *testing.T, alg jose.SignatureAlgorithm) *jwtkeys.Manager {
	t.Helper()
	m, err := jwtkeys.Open(jwtkeys.Config{Dir: f.dir, TrustDomain: td, Algorithm: alg, KeyTTL: keyTTL, MaxTokenTTL: maxToken,
		Clock: f.clock, Logger: discard, Observer: func(e jwtkeys.Event) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.events = append(f.events, e)
		}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (f *fixture) steps() []kms.RotationStep {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []kms.RotationStep
	for _, e := range f.events {
		out = append(out, e.Step)
	}
	return out
}

func sign(t *testing.T, m *jwtkeys.Manager, ttl time.Duration) jwtkeys.Token {
	t.Helper()
	tok, err := m.Sign(jwtkeys.SignRequest{ID: workload, Audiences: []string{"orders", "billing"}, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// validate checks token with go-spiffe against the manager's current bundle.
func validate(t *testing.T, m *jwtkeys.Manager, token string) (*jwtsvid.SVID, error) {
	t.Helper()
	b, err := m.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b.JWKS), `"use":"jwt-svid"`) {
		t.Fatalf("bundle keys lack use jwt-svid: %s", b.JWKS)
	}
	bundle, err := jwtbundle.Parse(td, b.JWKS)
	if err != nil {
		t.Fatalf("go-spiffe cannot parse the bundle: %v", err)
	}
	return jwtsvid.ParseAndValidate(token, bundle, []string{"orders"})
}

func TestSignedTokensVerifyWithGoSPIFFE(t *testing.T) {
	for _, alg := range jwtkeys.Algorithms {
		t.Run(string(alg), func(t *testing.T) {
			f := newFixture(t)
			m := f.open(t, alg)
			tok := sign(t, m, 5*time.Minute)
			svid, err := validate(t, m, tok.Token)
			if err != nil {
				t.Fatalf("ParseAndValidate: %v", err)
			}
			if svid.ID != workload || len(svid.Audience) != 2 {
				t.Fatalf("svid = %s %v", svid.ID, svid.Audience)
			}
			if got := svid.Expiry.Sub(f.clock.Now()); got > 5*time.Minute || got < 5*time.Minute-time.Second {
				t.Fatalf("lifetime %s, want 5m", got)
			}
			hdr, err := jose.ParseSigned(tok.Token, []jose.SignatureAlgorithm{alg})
			if err != nil {
				t.Fatal(err)
			}
			h := hdr.Signatures[0].Header
			if h.KeyID != tok.KeyID || h.ExtraHeaders["typ"] != "JWT" {
				t.Fatalf("header kid %q typ %v, want kid %q typ JWT", h.KeyID, h.ExtraHeaders["typ"], tok.KeyID)
			}
		})
	}
}

func TestTTLIsClampedToTheMaximum(t *testing.T) {
	f := newFixture(t)
	m := f.open(t, jose.ES256)
	for _, ttl := range []time.Duration{0, 10 * time.Hour} {
		if got := sign(t, m, ttl).ExpiresAt.Sub(f.clock.Now().Truncate(time.Second)); got != maxToken {
			t.Errorf("ttl %s: lifetime %s, want the maximum %s", ttl, got, maxToken)
		}
	}
}

func TestBadRequestsAreRefused(t *testing.T) {
	m := newFixture(t).open(t, jose.ES256)
	for name, req := range map[string]jwtkeys.SignRequest{
		"no audience":        {ID: workload},
		"empty audience":     {ID: workload, Audiences: []string{"a", ""}},
		"eleven audiences":   {ID: workload, Audiences: strings.Split("a,b,c,d,e,f,g,h,i,j,k", ",")},
		"long audience":      {ID: workload, Audiences: []string{strings.Repeat("a", 257)}},
		"other trust domain": {ID: spiffeid.RequireFromString("spiffe://evil.org/ns/a/sa/b"), Audiences: []string{"a"}},
		"trust domain id":    {ID: spiffeid.RequireFromString("spiffe://cluster.local"), Audiences: []string{"a"}},
		"negative ttl":       {ID: workload, Audiences: []string{"a"}, TTL: -time.Second},
	} {
		if _, err := m.Sign(req); !errors.Is(err, jwtkeys.ErrInvalidRequest) {
			t.Errorf("%s: err = %v, want ErrInvalidRequest", name, err)
		}
	}
}

func TestRotationSteps(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	m := f.open(t, jose.ES256)
	old := sign(t, m, maxToken)
	v0 := m.Status().BundleVersion

	// Prepare: published, not signing.
	st, err := m.Prepare(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Keys) != 2 || st.Keys[1].State != jwtkeys.StatePrepared || st.BundleVersion != v0+1 {
		t.Fatalf("after prepare: %+v", st)
	}
	next := st.Keys[1].ID
	if got := sign(t, m, time.Minute).KeyID; got != old.KeyID {
		t.Fatalf("a prepared key signs: kid %s", got)
	}
	if _, err := m.Prepare(ctx); !errors.Is(err, kms.ErrRotationState) {
		t.Fatalf("second prepare: %v", err)
	}

	// Activate: the new key signs, the old key still verifies.
	if st, err = m.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	if st.BundleVersion != v0+2 {
		t.Fatalf("bundle version %d, want %d", st.BundleVersion, v0+2)
	}
	fresh := sign(t, m, time.Minute)
	if fresh.KeyID != next {
		t.Fatalf("after activate signs with %s, want %s", fresh.KeyID, next)
	}
	for _, tok := range []string{old.Token, fresh.Token} {
		if _, err := validate(t, m, tok); err != nil {
			t.Fatalf("during the overlap: %v", err)
		}
	}

	// Retire: refused while old tokens may live, then the old key is gone.
	if _, err := m.Retire(ctx, false); !errors.Is(err, kms.ErrRotationState) || !strings.Contains(err.Error(), "force") {
		t.Fatalf("early retire: %v", err)
	}
	f.clock.Step(maxToken + jwtkeys.ClockSkew)
	if st, err = m.Retire(ctx, false); err != nil {
		t.Fatalf("retire after the tokens expired: %v", err)
	}
	if len(st.Keys) != 1 || st.Keys[0].ID != next || st.BundleVersion != v0+3 {
		t.Fatalf("after retire: %+v", st)
	}
	if _, err := validate(t, m, old.Token); err == nil || !strings.Contains(err.Error(), "no JWT authority") {
		t.Fatalf("a token of the retired key: err = %v, want its key not found", err)
	}
	if _, err := m.Retire(ctx, true); !errors.Is(err, kms.ErrRotationState) {
		t.Fatalf("retire with nothing retiring: %v", err)
	}
	if got, want := f.steps(), []kms.RotationStep{kms.StepPrepared, kms.StepActivated, kms.StepRetired}; !slices.Equal(got, want) {
		t.Fatalf("observed steps %v, want %v", got, want)
	}
}

func TestForcedRetireDropsAKeyWhoseTokensLive(t *testing.T) {
	ctx := context.Background()
	m := newFixture(t).open(t, jose.ES256)
	old := sign(t, m, maxToken)
	for _, step := range []func(context.Context) (jwtkeys.Status, error){m.Prepare, m.Activate} {
		if _, err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Retire(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := validate(t, m, old.Token); err == nil || !strings.Contains(err.Error(), "no JWT authority") {
		t.Fatalf("token of a force-retired key: err = %v, want its key not found", err)
	}
}

func TestKeysSurviveARestart(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	m := f.open(t, jose.ES256)
	old := sign(t, m, maxToken)
	if _, err := m.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	before := m.Status()

	// Reopened with another algorithm: the stored keys keep theirs.
	again := f.open(t, jose.ES384)
	after := again.Status()
	if after.BundleVersion != before.BundleVersion || len(after.Keys) != 2 || after.Keys[0].ID != before.Keys[0].ID ||
		after.Keys[1].ID != before.Keys[1].ID || after.Keys[1].State != jwtkeys.StatePrepared {
		t.Fatalf("after restart %+v, before %+v", after, before)
	}
	if _, err := validate(t, again, old.Token); err != nil {
		t.Fatalf("a token signed before the restart: %v", err)
	}
	if got := sign(t, again, time.Minute).KeyID; got != old.KeyID {
		t.Fatalf("after restart signs with %s, want %s", got, old.KeyID)
	}
	for path, want := range map[string]os.FileMode{f.dir: 0o700, filepath.Join(f.dir, jwtkeys.FileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %o, want %o", path, fi.Mode().Perm(), want)
		}
	}
}

func TestDamagedStateIsRefused(t *testing.T) {
	f := newFixture(t)
	f.open(t, jose.ES256)
	if err := os.WriteFile(filepath.Join(f.dir, jwtkeys.FileName), []byte(`{"version":3,"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := jwtkeys.Open(jwtkeys.Config{Dir: f.dir, TrustDomain: td, Algorithm: jose.ES256, KeyTTL: keyTTL, MaxTokenTTL: maxToken,
		Clock: f.clock, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "no active key") {
		t.Fatalf("open of a state without an active key: %v", err)
	}
}

// The schedule prepares at ½ of KeyTTL, activates at ⅚ and retires MaxTokenTTL (+ skew) later.
func TestScheduleTakesEachStep(t *testing.T) {
	f := newFixture(t)
	m := f.open(t, jose.ES256)
	first := sign(t, m, time.Minute).KeyID
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	advanceUntil := func(d time.Duration, want int) {
		t.Helper()
		waitTimer(t, f.clock)
		f.clock.Step(d)
		deadline := time.Now().Add(10 * time.Second)
		for len(f.steps()) < want {
			if time.Now().After(deadline) {
				t.Fatalf("after %s: steps %v, want %d", d, f.steps(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	st := m.Status()
	if st.NextStep != kms.StepPrepared || !st.NextStepAt.Equal(f.clock.Now().Add(keyTTL/2)) {
		t.Fatalf("first next step %s at %s", st.NextStep, st.NextStepAt)
	}
	advanceUntil(keyTTL/2, 1)
	advanceUntil(keyTTL/3, 2)
	if got := sign(t, m, time.Minute).KeyID; got == first {
		t.Fatal("the schedule activated nothing")
	}
	advanceUntil(maxToken+jwtkeys.ClockSkew, 3)
	if got, want := f.steps(), []kms.RotationStep{kms.StepPrepared, kms.StepActivated, kms.StepRetired}; !slices.Equal(got, want) {
		t.Fatalf("steps %v, want %v", got, want)
	}
	if n := len(m.Status().Keys); n != 1 {
		t.Fatalf("%d keys after the retirement, want 1", n)
	}
}

// waitTimer waits until Run is waiting on the fake clock, so that a Step reaches it.
func waitTimer(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("Run never waits on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

package workloadapi_test

import (
	"context"
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/workloadapi"
)

func TestFetchJWTSVIDIsCachedUntilHalfLife(t *testing.T) {
	h := newHarness(t, options{})
	c := h.client(t, cart)
	ctx := testCtx(t)
	first, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders", ExtraAudiences: []string{"billing"}})
	if err != nil {
		t.Fatal(err)
	}
	if first.ID != cartID {
		t.Fatalf("jwt-svid for %s, want %s", first.ID, cartID)
	}
	// The same audiences in another order, from another client of the identity, concurrently:
	// all answered from the cache.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			got, err := h.client(t, cart).FetchJWTSVID(ctx, jwtsvid.Params{Audience: "billing", ExtraAudiences: []string{"orders"}})
			if err != nil || got.Marshal() != first.Marshal() {
				t.Errorf("second fetch: %v, same token %v", err, err == nil && got.Marshal() == first.Marshal())
			}
		})
	}
	wg.Wait()
	if n := h.citadel.mintCount(); n != 1 {
		t.Fatalf("citadel minted %d tokens, want 1 (the rest from the cache)", n)
	}
	// Past half its life the token is minted again.
	h.clk.Step(jwtTTL/2 + time.Second)
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders", ExtraAudiences: []string{"billing"}}); err != nil {
		t.Fatal(err)
	}
	if n := h.citadel.mintCount(); n != 2 {
		t.Fatalf("citadel minted %d tokens after the half-life, want 2", n)
	}
}

func TestConcurrentMissesMintOnce(t *testing.T) {
	h := newHarness(t, options{})
	c := h.client(t, web)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "orders"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := h.citadel.mintCount(); n != 1 {
		t.Fatalf("16 concurrent identical misses minted %d tokens, want 1", n)
	}
}

func TestValidateJWTSVIDReturnsIDClaimsAndAttributes(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	svid, err := h.client(t, cart).FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.client(t, web).ValidateJWTSVID(ctx, svid.Marshal(), "web"); err != nil {
		t.Fatal(err)
	}
	// go-spiffe's client drops the response's claims (it parses the token itself): ask raw.
	resp, err := workloadpb.NewSpiffeWorkloadAPIClient(h.rawPodConn(t, web)).ValidateJWTSVID(withHeader(ctx),
		&workloadpb.ValidateJWTSVIDRequest{Audience: "web", Svid: svid.Marshal()})
	if err != nil {
		t.Fatal(err)
	}
	claims := resp.GetClaims().AsMap()
	attrs, _ := claims[workloadapi.AttributesClaim].(map[string]any)
	want := map[string]string{"namespace": "shop", "serviceAccount": "cart", "tenant": "acme", "app": "store"}
	for k, v := range want {
		if attrs[k] != v {
			t.Errorf("attribute %s = %v, want %q (all: %v)", k, attrs[k], v, attrs)
		}
	}
	if resp.GetSpiffeId() != cartID.String() || claims["sub"] != cartID.String() || claims["aud"] != "web" || len(attrs) != len(want) {
		t.Fatalf("validated %s with claims %v, want %s and attributes %v", resp.GetSpiffeId(), claims, cartID, want)
	}

	// Offline, with the JWT bundle from the Workload API, as go-spiffe apps do.
	bundles, err := spiffeapi.FetchJWTBundles(ctx, h.addr(web))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"web"}); err != nil {
		t.Fatalf("offline validation with the served jwt bundle: %v", err)
	}
}

type jwtBundleWatcher struct{ updates chan *jwtbundle.Set }

func (w jwtBundleWatcher) OnJWTBundlesUpdate(s *jwtbundle.Set) { w.updates <- s }
func (w jwtBundleWatcher) OnJWTBundlesWatchError(error)        {}

func TestJWTBundleChangeArrivesOnOpenWatch(t *testing.T) {
	h := newHarness(t, options{})
	w := jwtBundleWatcher{updates: make(chan *jwtbundle.Set, 4)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.client(t, cart).WatchJWTBundles(ctx, w) }()
	defer func() { cancel(); <-done }()
	keys := func() int {
		select {
		case s := <-w.updates:
			b, _ := s.Get(trustDomain)
			return len(b.JWTAuthorities())
		case <-time.After(10 * time.Second):
			t.Fatal("no jwt bundle on the open watch")
			return 0
		}
	}
	if n := keys(); n != 1 {
		t.Fatalf("first jwt bundle has %d keys, want 1", n)
	}
	h.citadel.rotate()
	// What the JWTBundleChanged event does (rotationevents): refetch up to the event's version.
	if err := h.bundles.RefreshTo(testCtx(t), 2, 3, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if n := keys(); n != 2 {
		t.Fatalf("jwt bundle after the rotation has %d keys, want 2", n)
	}
}

// Every bad input gets the spec's code and a clear message, and nothing is accepted.
func TestBadInputs(t *testing.T) {
	h := newHarness(t, options{})
	ctx := testCtx(t)
	good, err := h.client(t, cart).FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web"})
	if err != nil {
		t.Fatal(err)
	}
	h.citadel.mu.Lock()
	key, kid := h.citadel.key, h.citadel.kid
	h.citadel.mu.Unlock()
	expired, _, err := signJWT(key, kid, cartID.String(), []string{"web"}, time.Now().Add(-time.Hour), jwtTTL)
	if err != nil {
		t.Fatal(err)
	}
	forged, _, err := signJWT(genKeyNoTB(), kid, cartID.String(), []string{"web"}, time.Now(), jwtTTL)
	if err != nil {
		t.Fatal(err)
	}
	otherTD, _, err := signJWT(key, kid, "spiffe://evil.example/ns/shop/sa/cart", []string{"web"}, time.Now(), jwtTTL)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good.Marshal(), ".")
	algNone := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	oversized := good.Marshal() + strings.Repeat("A", workloadapi.MaxTokenBytes)

	api := workloadpb.NewSpiffeWorkloadAPIClient(h.rawConn(t))
	validate := func(tok, aud string) error {
		_, err := h.client(t, web).ValidateJWTSVID(ctx, tok, aud)
		return err
	}
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"missing security header", func() error {
			_, err := api.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "web", Svid: good.Marshal()})
			return err
		}(), codes.InvalidArgument, "security header missing from request"},
		{"no audience to fetch", func() error {
			_, err := workloadpb.NewSpiffeWorkloadAPIClient(h.rawPodConn(t, cart)).FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{})
			return err
		}(), codes.InvalidArgument, "audience must be specified"},
		{"empty audience to fetch", func() error {
			_, err := h.client(t, cart).FetchJWTSVID(ctx, jwtsvid.Params{Audience: ""})
			return err
		}(), codes.InvalidArgument, "audience must not be empty"},
		{"another identity's svid", func() error {
			_, err := h.client(t, cart).FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web", Subject: webID})
			return err
		}(), codes.PermissionDenied, "no identity issued for " + webID.String()},
		{"no audience to validate", validate(good.Marshal(), ""), codes.InvalidArgument, "audience must be specified"},
		{"empty token", validate("", "web"), codes.InvalidArgument, "svid must be specified"},
		{"wrong audience", validate(good.Marshal(), "billing"), codes.InvalidArgument,
			`jwtsvid: expected audience in ["billing"] (audience=["web"])`},
		{"expired", validate(expired, "web"), codes.InvalidArgument, "jwtsvid: token has expired"},
		{"forged signature", validate(forged, "web"), codes.InvalidArgument, "jwtsvid: unable to get claims from token: go-jose/go-jose: error in cryptographic primitive"},
		{"alg none", validate(algNone, "web"), codes.InvalidArgument, `unsigned token (alg "none") refused`},
		{"not a jwt", validate("not-a-jwt", "web"), codes.InvalidArgument, `unsigned token (alg "") refused`},
		{"wrong trust domain", validate(otherTD, "web"), codes.InvalidArgument,
			`jwtsvid: no bundle found for trust domain "evil.example"`},
		{"oversized", validate(oversized, "web"), codes.InvalidArgument,
			"svid of " + itoa(len(oversized)) + " bytes is too large (at most 16384)"},
	} {
		t.Run(tc.name, func(t *testing.T) { requireStatus(t, tc.err, tc.code, tc.msg) })
	}
}

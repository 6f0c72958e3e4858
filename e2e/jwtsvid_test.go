package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// bearer sends a workload token on every call over the agent's Unix socket.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func kid(t *testing.T, token string) string {
	t.Helper()
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

// JWT-SVIDs through the whole stack, as an app sees them with go-spiffe's Workload API client:
// the agent asks citadel, citadel kms-adapter; a JWT key rotation reaches the agent on its event,
// a token of the old key validates during the overlap and is refused once the key is retired.
func TestJWTSVIDKeyRotationThroughTheStack(t *testing.T) {
	s, _ := startStack(t)
	p := pod(t, "shop/frontend-0")
	token, err := s.Token(p, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+s.Socket("node-a")),
		workloadapi.WithDialOptions(grpc.WithPerRPCCredentials(bearer(token))))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	old, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders"})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if want := "spiffe://cluster.local/ns/shop/sa/frontend"; old.ID.String() != want {
		t.Fatalf("JWT-SVID for %s, want %s", old.ID, want)
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(old.Marshal(), bundles, []string{"orders"}); err != nil {
		t.Fatalf("offline validation against the Workload API's bundle: %v", err)
	}

	admin, conn, err := s.Admin()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	step := func(st kmsv1.RotationStep, force bool) *kmsv1.JWTKeyStatus {
		t.Helper()
		resp, err := admin.RotateJWTKey(ctx, &kmsv1.RotateJWTKeyRequest{Step: st, Force: force})
		if err != nil {
			t.Fatalf("RotateJWTKey %s: %v", st, err)
		}
		return resp
	}
	step(kmsv1.RotationStep_ROTATION_STEP_PREPARE, false)
	st := step(kmsv1.RotationStep_ROTATION_STEP_ACTIVATE, false)
	var active string
	for _, k := range st.GetKeys() {
		if k.GetState() == "active" {
			active = k.GetKeyId()
		}
	}
	// A new audience is a cache miss at the agent: signed by the new key.
	fresh, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	if got := kid(t, fresh.Marshal()); got != active || got == kid(t, old.Marshal()) {
		t.Fatalf("after activation kid %s, want the new key %s", got, active)
	}
	// The overlap: the old key's token still validates at the agent, once its bundle has the new
	// key (the JWTBundleChanged event and citadel's refetch).
	waitUntil(t, ctx, "the new key in the agent's JWT bundle", func() bool {
		_, err := client.ValidateJWTSVID(ctx, fresh.Marshal(), "billing")
		return err == nil
	})
	if _, err := client.ValidateJWTSVID(ctx, old.Marshal(), "orders"); err != nil {
		t.Fatalf("a token of the previous key during the overlap: %v", err)
	}

	step(kmsv1.RotationStep_ROTATION_STEP_RETIRE, true)
	waitUntil(t, ctx, "the retired key gone from the agent's JWT bundle", func() bool {
		_, err := client.ValidateJWTSVID(ctx, old.Marshal(), "orders")
		return err != nil
	})
	if _, err := client.ValidateJWTSVID(ctx, fresh.Marshal(), "billing"); err != nil {
		t.Fatalf("a token of the active key after the retirement: %v", err)
	}
}

// waitUntil polls cond (events take a moment to cross NATS, citadel and the agent) until ctx ends.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not before %v", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

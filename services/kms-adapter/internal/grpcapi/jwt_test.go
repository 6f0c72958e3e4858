package grpcapi_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/grpcapi"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/jwtkeys"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmsmetrics"
)

type jwtEnv struct {
	env
	metrics *kmsmetrics.JWT
	citadel kmsv1.JWTServiceClient
	admin   kmsv1.KMSAdminServiceClient
}

func newJWTEnv(t testing.TB) jwtEnv {
	t.Helper()
	keys, err := jwtkeys.Open(jwtkeys.Config{Dir: filepath.Join(t.TempDir(), "jwt"), TrustDomain: td, Algorithm: jose.ES256,
		KeyTTL: 24 * time.Hour, MaxTokenTTL: time.Hour, Clock: clock.RealClock{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := kmsmetrics.NewJWT(prometheus.NewRegistry(), keys.ActiveKeyAge)
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, localCA(t), func(c *grpcapi.Config) { c.JWTKeys, c.JWTMetrics = keys, m })
	return jwtEnv{env: e, metrics: m, citadel: kmsv1.NewJWTServiceClient(e.conn(t, e.citadel)),
		admin: kmsv1.NewKMSAdminServiceClient(e.conn(t, e.admin))}
}

func (e jwtEnv) bundle(t *testing.T) *jwtbundle.Bundle {
	t.Helper()
	resp, err := e.citadel.GetJWTBundle(t.Context(), &kmsv1.GetJWTBundleRequest{})
	if err != nil {
		t.Fatalf("GetJWTBundle: %v", err)
	}
	if resp.GetTrustDomain() != td.Name() || resp.GetVersion() == 0 {
		t.Fatalf("bundle of %q version %d", resp.GetTrustDomain(), resp.GetVersion())
	}
	b, err := jwtbundle.Parse(td, resp.GetJwks())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e jwtEnv) sign(t *testing.T) *kmsv1.SignJWTSVIDResponse {
	t.Helper()
	resp, err := e.citadel.SignJWTSVID(t.Context(), &kmsv1.SignJWTSVIDRequest{SpiffeId: workload.String(), Audiences: []string{"orders"}, TtlSeconds: 300})
	if err != nil {
		t.Fatalf("SignJWTSVID: %v", err)
	}
	return resp
}

func TestCitadelGetsAJWTSVIDThatVerifiesWithTheBundle(t *testing.T) {
	e := newJWTEnv(t)
	resp := e.sign(t)
	svid, err := jwtsvid.ParseAndValidate(resp.GetToken(), e.bundle(t), []string{"orders"})
	if err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if svid.ID != workload || !svid.Expiry.Equal(resp.GetExpiresAt().AsTime()) {
		t.Fatalf("svid %s expiring %s, response says %s", svid.ID, svid.Expiry, resp.GetExpiresAt().AsTime())
	}
	if got := testutil.ToFloat64(e.metrics.Signatures.WithLabelValues(kmsmetrics.ResultOK)); got != 1 {
		t.Fatalf("%s{result=ok} = %v, want 1", kmsmetrics.JWTSignTotal, got)
	}
}

func TestOnlyCitadelMaySignJWTs(t *testing.T) {
	e := newJWTEnv(t)
	ctx := t.Context()
	agent := kmsv1.NewJWTServiceClient(e.conn(t, e.agent))
	_, err := agent.SignJWTSVID(ctx, &kmsv1.SignJWTSVIDRequest{SpiffeId: workload.String(), Audiences: []string{"a"}})
	wantCode(t, "node agent: SignJWTSVID", err, codes.PermissionDenied)
	_, err = agent.GetJWTBundle(ctx, &kmsv1.GetJWTBundleRequest{})
	wantCode(t, "node agent: GetJWTBundle", err, codes.PermissionDenied)
	_, err = kmsv1.NewJWTServiceClient(e.anonymous(t)).SignJWTSVID(ctx, &kmsv1.SignJWTSVIDRequest{})
	wantCode(t, "no client certificate", err, codes.Unauthenticated)
	_, err = kmsv1.NewJWTServiceClient(e.conn(t, e.env.admin)).SignJWTSVID(ctx, &kmsv1.SignJWTSVIDRequest{})
	wantCode(t, "admin: SignJWTSVID", err, codes.PermissionDenied)
	_, err = kmsv1.NewKMSAdminServiceClient(e.conn(t, e.env.citadel)).RotateJWTKey(ctx,
		&kmsv1.RotateJWTKeyRequest{Step: kmsv1.RotationStep_ROTATION_STEP_PREPARE})
	wantCode(t, "citadel: RotateJWTKey", err, codes.PermissionDenied)
}

func TestBadJWTRequestsAreInvalidArgument(t *testing.T) {
	e := newJWTEnv(t)
	for name, req := range map[string]*kmsv1.SignJWTSVIDRequest{
		"no audience":    {SpiffeId: workload.String()},
		"empty audience": {SpiffeId: workload.String(), Audiences: []string{""}},
		"bad id":         {SpiffeId: "spiffe://cluster.local/a/../b", Audiences: []string{"a"}},
		"foreign id":     {SpiffeId: "spiffe://evil.org/ns/a/sa/b", Audiences: []string{"a"}},
		"negative ttl":   {SpiffeId: workload.String(), Audiences: []string{"a"}, TtlSeconds: -1},
	} {
		_, err := e.citadel.SignJWTSVID(t.Context(), req)
		wantCode(t, name, err, codes.InvalidArgument)
	}
	if got := testutil.ToFloat64(e.metrics.Signatures.WithLabelValues(kmsmetrics.ResultInvalid)); got != 5 {
		t.Fatalf("%s{result=invalid} = %v, want 5", kmsmetrics.JWTSignTotal, got)
	}
}

// The operator's rotation over the admin API: prepare publishes without signing, activate signs
// with the new key while the old one still verifies, retire is refused while old tokens live.
func TestOperatorRotatesTheJWTKey(t *testing.T) {
	e := newJWTEnv(t)
	ctx := t.Context()
	old := e.sign(t)
	step := func(s kmsv1.RotationStep, force bool) (*kmsv1.JWTKeyStatus, error) {
		return e.admin.RotateJWTKey(ctx, &kmsv1.RotateJWTKeyRequest{Step: s, Force: force})
	}
	st, err := step(kmsv1.RotationStep_ROTATION_STEP_PREPARE, false)
	if err != nil || len(st.GetKeys()) != 2 || st.GetKeys()[1].GetState() != jwtkeys.StatePrepared {
		t.Fatalf("prepare: %v %v", st, err)
	}
	next := st.GetKeys()[1].GetKeyId()
	if !strings.Contains(string(mustJWKS(t, e)), next) {
		t.Fatal("the prepared key is not in the bundle")
	}
	if kid := kidOf(t, e.sign(t).GetToken()); kid == next {
		t.Fatal("the prepared key signs")
	}
	_, err = step(kmsv1.RotationStep_ROTATION_STEP_PREPARE, false)
	wantCode(t, "second prepare", err, codes.FailedPrecondition)
	if _, err = step(kmsv1.RotationStep_ROTATION_STEP_ACTIVATE, false); err != nil {
		t.Fatal(err)
	}
	fresh := e.sign(t)
	if kid := kidOf(t, fresh.GetToken()); kid != next {
		t.Fatalf("after activate kid %s, want %s", kid, next)
	}
	for _, tok := range []string{old.GetToken(), fresh.GetToken()} {
		if _, err := jwtsvid.ParseAndValidate(tok, e.bundle(t), []string{"orders"}); err != nil {
			t.Fatalf("during the overlap: %v", err)
		}
	}
	_, err = step(kmsv1.RotationStep_ROTATION_STEP_RETIRE, false)
	wantCode(t, "early retire", err, codes.FailedPrecondition)
	if !strings.Contains(status.Convert(err).Message(), "force") {
		t.Fatalf("early retire message %q does not say how to force it", status.Convert(err).Message())
	}
	if st, err = step(kmsv1.RotationStep_ROTATION_STEP_RETIRE, true); err != nil || len(st.GetKeys()) != 1 {
		t.Fatalf("forced retire: %v %v", st, err)
	}
	if _, err := jwtsvid.ParseAndValidate(old.GetToken(), e.bundle(t), []string{"orders"}); err == nil {
		t.Fatal("a token of the retired key still verifies")
	}
	got, err := e.admin.GetJWTKeyStatus(ctx, &kmsv1.GetJWTKeyStatusRequest{})
	if err != nil || got.GetBundleVersion() != st.GetBundleVersion() || got.GetNextStepAt() == nil {
		t.Fatalf("status %v %v", got, err)
	}
}

func mustJWKS(t *testing.T, e jwtEnv) []byte {
	t.Helper()
	resp, err := e.citadel.GetJWTBundle(t.Context(), &kmsv1.GetJWTBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetJwks()
}

func kidOf(t *testing.T, token string) string {
	t.Helper()
	jws, err := jose.ParseSigned(token, jwtkeys.Algorithms)
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

// BenchmarkSignJWTSVID is citadel's call to kms-adapter over mTLS gRPC: the network, TLS and gRPC
// cost on top of jwtkeys' BenchmarkSign.
func BenchmarkSignJWTSVID(b *testing.B) {
	e := newJWTEnv(b)
	req := &kmsv1.SignJWTSVIDRequest{SpiffeId: workload.String(), Audiences: []string{"orders"}, TtlSeconds: 300}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.citadel.SignJWTSVID(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/app"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/config"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/vaulttest"
)

// listeners collects the addresses kms-adapter announces in its JSON logs.
type listeners chan [2]string

func (l listeners) Write(p []byte) (int, error) {
	// Cheap test first: the benchmark logs one record per signature.
	if !bytes.Contains(p, []byte(`"msg":"`+lifecycle.ListeningMsg+`"`)) {
		return len(p), nil
	}
	var rec struct{ Msg, Listener, Addr string }
	if json.Unmarshal(p, &rec) == nil && rec.Msg == lifecycle.ListeningMsg {
		l <- [2]string{rec.Listener, rec.Addr}
	}
	return len(p), nil
}

// kmsAdapter is a running kms-adapter on Vault, reached as citadel.
type kmsAdapter struct {
	client kmsv1.KeyManagementServiceClient
	jwt    kmsv1.JWTServiceClient
	admin  string
}

// startKMSAdapter runs the whole kms-adapter (app.New + Run: gRPC over mTLS, admin, the backend's
// background work) with -backend vault in mode, until the test ends.
func startKMSAdapter(tb testing.TB, srv *vaulttest.Server, mode string) *kmsAdapter {
	tb.Helper()
	dir := tb.TempDir()
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	serverID, _ := servicetls.ServiceID(td, servicetls.KMSAdapter)
	citadelID, _ := servicetls.ServiceID(td, servicetls.Citadel)
	serverFiles, err := ca.Issue(dir, "kms-adapter", serverID, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	citadelFiles, err := ca.Issue(dir, "citadel", citadelID, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := config.Config{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Backend: "vault",
		StateDir: filepath.Join(dir, "kms"), DefaultTTL: 24 * time.Hour, MaxTTL: 2160 * time.Hour,
		RootTTL: 8760 * time.Hour, TLS: serverFiles, ExpiryWarning: time.Hour,
		JWTAlgorithm: "ES256", JWTKeyTTL: 24 * time.Hour, JWTMaxTTL: time.Hour,
		Vault: config.Vault{Addr: srv.Addr, Mount: pki.Mount, Role: pki.Role, Mode: mode, IntermediateTTL: 720 * time.Hour,
			Auth: "token", TokenFile: vaulttest.WriteFile(tb, "token", srv.RootToken)}}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	addrs := make(listeners, 10)
	a, err := app.New(tb.Context(), cfg, slog.New(slog.NewJSONHandler(addrs, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("kms-adapter Run: %v", err)
		}
	})
	got := map[string]string{}
	for len(got) < 2 {
		select {
		case l := <-addrs:
			got[l[0]] = l[1]
		case <-time.After(10 * time.Second):
			tb.Fatalf("listeners not announced: %v", got)
		}
	}
	citadel, err := servicetls.Load(citadelFiles)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := grpc.NewClient(got["grpc"], grpc.WithTransportCredentials(citadel.ClientCredentials(serverID)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return &kmsAdapter{client: kmsv1.NewKeyManagementServiceClient(conn), jwt: kmsv1.NewJWTServiceClient(conn), admin: got["admin"]}
}

func (k *kmsAdapter) readyz(t *testing.T) int {
	t.Helper()
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get("http://" + k.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// /readyz follows Vault in leaf mode: not ready while sealed, ready again after unseal, and the
// process is never restarted.
func TestReadyzFollowsVault(t *testing.T) {
	srv := vaulttest.Start(t, vaulttest.Options{})
	srv.ConfigurePKI(pki)
	k := startKMSAdapter(t, srv, "leaf")
	if code := k.readyz(t); code != http.StatusOK {
		t.Fatalf("/readyz = %d before any outage", code)
	}
	sign := func() error {
		_, err := k.client.SignCertificate(t.Context(), &kmsv1.SignCertificateRequest{
			Csr: kmstest.CSRDER(t, kmstest.NewKey(t)), SpiffeId: id.String(), TtlSeconds: 3600})
		return err
	}
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	srv.Seal()
	eventually(t, "/readyz fails while sealed", func() error {
		if code := k.readyz(t); code == http.StatusOK {
			return fmt.Errorf("/readyz = %d", code)
		}
		return nil
	})
	if err := sign(); err == nil {
		t.Error("signed while vault is sealed")
	}
	// JWT-SVID keys are kms-adapter's own (docs/rotation.md): a Vault outage does not stop them.
	if _, err := k.jwt.SignJWTSVID(t.Context(), &kmsv1.SignJWTSVIDRequest{SpiffeId: id.String(), Audiences: []string{"orders"}}); err != nil {
		t.Errorf("signing a jwt-svid while vault is sealed: %v", err)
	}
	srv.Unseal()
	eventually(t, "/readyz after unseal", func() error {
		if code := k.readyz(t); code != http.StatusOK {
			return fmt.Errorf("/readyz = %d", code)
		}
		return nil
	})
	if err := sign(); err != nil {
		t.Fatalf("signing after unseal: %v", err)
	}
}

package app_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/app"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/config"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmsmetrics"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// records is an io.Writer for a JSON slog handler: each Write is one record, parsed and queued.
type records chan map[string]any

func (r records) Write(p []byte) (int, error) {
	var rec map[string]any
	if err := json.Unmarshal(p, &rec); err != nil {
		return 0, err
	}
	r <- rec
	return len(p), nil
}

func setup(t *testing.T) (config.Config, servicetls.Files, spiffeid.ID) {
	t.Helper()
	cfg, citadel, serverID, _, _ := setupCA(t)
	return cfg, citadel, serverID
}

// setupCA is setup that also returns the control-plane CA and the directory of the files, to
// issue more identities.
func setupCA(t *testing.T) (config.Config, servicetls.Files, spiffeid.ID, *servicetls.BootstrapCA, string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverID, _ := servicetls.ServiceID(td, servicetls.KMSAdapter)
	citadelID, _ := servicetls.ServiceID(td, servicetls.Citadel)
	serverFiles, err := ca.Issue(dir, "kms-adapter", serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	citadelFiles, err := ca.Issue(dir, "citadel", citadelID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return config.Config{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Backend: "local",
			StateDir: filepath.Join(dir, "kms"), DefaultTTL: 24 * time.Hour, MaxTTL: 2160 * time.Hour,
			RootTTL: 8760 * time.Hour, TLS: serverFiles, JWTAlgorithm: "ES256", JWTKeyTTL: 24 * time.Hour, JWTMaxTTL: time.Hour},
		citadelFiles, serverID, ca, dir
}

func TestServesUntilCancelled(t *testing.T) {
	cfg, citadelFiles, serverID := setup(t)
	logs := make(records, 100)
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	a, err := app.New(t.Context(), cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	var fingerprint string
	addrs := map[string]string{}
	deadline := time.After(10 * time.Second)
	for len(addrs) < 2 {
		select {
		case rec := <-logs:
			switch rec["msg"] {
			case lifecycle.ListeningMsg:
				addrs[rec["listener"].(string)] = rec["addr"].(string)
			case "certificate authority ready":
				fingerprint, _ = rec[logkey.RootFingerprint].(string)
			}
		case <-deadline:
			t.Fatalf("listeners not announced; got %v", addrs)
		}
	}

	citadel, err := servicetls.Load(citadelFiles)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(citadel.ClientCredentials(serverID)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := kmsv1.NewKeyManagementServiceClient(conn)
	workload := spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	if _, err := client.SignCertificate(ctx, &kmsv1.SignCertificateRequest{Csr: kmstest.CSRDER(t, kmstest.NewKey(t)), SpiffeId: workload.String()}); err != nil {
		t.Fatalf("SignCertificate: %v", err)
	}
	bundle, err := client.GetTrustBundle(ctx, &kmsv1.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(bundle.GetRootCertificates()[0])
	if fingerprint != hex.EncodeToString(sum[:]) {
		t.Errorf("logged root fingerprint %q, want the served root's %x", fingerprint, sum)
	}

	httpClient := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	metrics := get(t, httpClient, "http://"+addrs["admin"]+"/metrics")
	for _, want := range []string{
		kmsmetrics.SignTotal + `{result="ok"} 1`,
		kmsmetrics.RootExpiryTimestampSeconds,
		kmsmetrics.IntermediateExpiryTimestampSeconds,
		kmsmetrics.SignDurationSeconds + "_count 1",
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if ready := get(t, httpClient, "http://"+addrs["admin"]+"/readyz"); ready != "ok\n" {
		t.Errorf("/readyz = %q", ready)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel: %v, want a clean stop", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	close(logs)
	for rec := range logs {
		if b, _ := json.Marshal(rec); bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("log record carries key material: %s", b)
		}
	}
}

func TestUnknownBackendIsRefused(t *testing.T) {
	cfg, _, _ := setup(t)
	cfg.Backend = "vualt"
	_, err := app.New(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), `"vualt"`) || !strings.Contains(err.Error(), "local") {
		t.Fatalf("err = %v, want an unknown backend error listing local", err)
	}
}

func get(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

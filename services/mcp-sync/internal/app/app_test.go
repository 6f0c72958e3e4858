package app

import (
	"bufio"
	"context"
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
	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestServesTheExampleCluster runs the whole service the way main does, on ephemeral ports read
// from the "listening" log lines, against the dev stack's manifests.
func TestServesTheExampleCluster(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("portcullis.test")
	ca, err := servicetls.NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serverID, _ := servicetls.ServiceID(td, servicetls.MCPSync)
	files, err := ca.Issue(dir, "mcp-sync", serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{
		Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Source: "file",
		ManifestsDir: filepath.Join("..", "..", "..", "..", "examples", "cluster"),
		Resync:       time.Minute, TLS: files,
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// The log is read as it is written: the bound addresses come from the "listening" lines.
	pr, pw := io.Pipe()
	listening := make(chan [2]string, 2)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct{ Msg, Listener, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == lifecycle.ListeningMsg {
				listening <- [2]string{line.Listener, line.Addr}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	a, err := New(cfg, slog.New(slog.NewJSONHandler(pw, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		_ = pw.Close()
	}()
	addrs := map[string]string{}
	for len(addrs) < 2 {
		select {
		case l := <-listening:
			addrs[l[0]] = l[1]
		case <-time.After(10 * time.Second):
			t.Fatalf("listening addresses = %v", addrs)
		}
	}
	if addrs["grpc"] == "" || addrs["admin"] == "" {
		t.Fatalf("listening addresses = %v", addrs)
	}

	waitUntil(t, "readiness", func() bool { return httpGet(t, "http://"+addrs["admin"]+"/readyz") != "" })
	metrics := httpGet(t, "http://"+addrs["admin"]+"/metrics")
	for _, want := range []string{`mcp_sync_objects{kind="pod"} 4`, `mcp_sync_objects{kind="namespace"} 2`, "mcp_sync_last_good_load_timestamp_seconds"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	citadelID, _ := servicetls.ServiceID(td, servicetls.Citadel)
	cfiles, err := ca.Issue(dir, "citadel", citadelID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cid, err := servicetls.Load(cfiles)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(cid.ClientCredentials(serverID)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pods := mcpclient.NewPods()
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan error, 1)
	go func() {
		wdone <- mcpclient.Watch(wctx, mcpclient.Config{Conn: conn, NodeID: mcpclient.ClusterNodeID, TypeURL: mcpclient.PodTypeURL,
			Apply: pods, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	defer func() { wcancel(); <-wdone }()
	waitUntil(t, "citadel's view", func() bool { return pods.Len() == 4 })
	if p, ok := pods.Get("payments/ledger-0"); !ok || p.GetNodeName() != "node-b" || p.GetServiceAccount() != "ledger" {
		t.Errorf("payments/ledger-0 = %v", p)
	}
}

// httpGet returns the body of a 200 response, or "" otherwise.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not waiting for timing
	}
}

package lifecycle

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const waitTimeout = 10 * time.Second

func jsonLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	logger, err := NewLogger(buf, "debug", "test")
	if err != nil {
		t.Fatal(err)
	}
	return logger, buf
}

// listeningAddr waits for the "listening" record of the named listener and returns its addr.
func listeningAddr(t *testing.T, buf *syncBuffer, name string) string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		for _, rec := range buf.records(t) {
			if rec["msg"] == ListeningMsg && rec["listener"] == name {
				addr, _ := rec["addr"].(string)
				return addr
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %q record for listener %s", ListeningMsg, name)
	return ""
}

func TestListenLogsBoundAddress(t *testing.T) {
	logger, buf := jsonLogger(t)
	lis, err := Listen(logger, "grpc", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()

	addr := listeningAddr(t, buf, "grpc")
	if addr != lis.Addr().String() {
		t.Fatalf("logged addr %q, bound %q", addr, lis.Addr())
	}
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("logged the requested port, not the bound one: %s", addr)
	}
	recs := buf.records(t)
	if len(recs) != 1 || recs[0]["service"] != "test" || recs[0]["level"] != "INFO" {
		t.Errorf("log records = %v", recs)
	}
}

func TestListenErrorNamesListener(t *testing.T) {
	logger, _ := jsonLogger(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = Listen(logger, "admin", taken.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "admin") || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("Listen on a taken port: error = %v, want one naming the listener and address", err)
	}
}

func TestServeGRPCStopsOnCancel(t *testing.T) {
	logger, _ := jsonLogger(t)
	lis, err := Listen(logger, "grpc", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- ServeGRPC(ctx, srv, lis) }()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	callCtx, callCancel := context.WithTimeout(context.Background(), waitTimeout)
	defer callCancel()
	if _, err := healthpb.NewHealthClient(conn).Check(callCtx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check while serving: %v", err)
	}

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("ServeGRPC after cancel = %v, want nil", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("ServeGRPC did not return after cancel")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("listener still accepts connections after ServeGRPC returned")
	}
}

func TestServeGRPCReportsServeFailure(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis.Close() // Serve fails at once
	srv := grpc.NewServer()
	defer srv.Stop()
	err = ServeGRPC(context.Background(), srv, lis)
	if err == nil || !strings.Contains(err.Error(), lis.Addr().String()) {
		t.Fatalf("ServeGRPC on a closed listener = %v, want an error naming the address", err)
	}
}

type admin struct {
	base    string
	ready   atomic.Pointer[error]
	stopped chan error
	cancel  context.CancelFunc
}

func startAdmin(t *testing.T) *admin {
	t.Helper()
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounter(prometheus.CounterOpts{Name: "portcullis_test_requests_total", Help: "test"})
	reg.MustRegister(requests)
	requests.Add(3)

	logger, buf := jsonLogger(t)
	a := &admin{stopped: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() {
		a.stopped <- Admin{Addr: "127.0.0.1:0", Gatherer: reg, Logger: logger, Ready: func() error {
			if err := a.ready.Load(); err != nil {
				return *err
			}
			return nil
		}}.Run(ctx)
	}()
	a.base = "http://" + listeningAddr(t, buf, "admin")
	t.Cleanup(func() {
		a.cancel()
		select {
		case err := <-a.stopped:
			if err != nil {
				t.Errorf("Admin.Run after cancel = %v, want nil", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Admin.Run did not return after cancel")
		}
	})
	return a
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestAdminEndpoints(t *testing.T) {
	a := startAdmin(t)
	defer http.DefaultClient.CloseIdleConnections()

	code, body := get(t, a.base+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, "portcullis_test_requests_total 3") {
		t.Errorf("/metrics = %d %q, want the registry's counter", code, body)
	}
	if code, body := get(t, a.base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, a.base+"/readyz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/readyz while ready = %d %q", code, body)
	}

	notReady := errors.New("pods not synced from mcp-sync")
	a.ready.Store(&notReady)
	code, body = get(t, a.base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "pods not synced from mcp-sync") {
		t.Errorf("/readyz while not ready = %d %q, want 503 with the reason", code, body)
	}
	// Liveness does not depend on readiness.
	if code, _ := get(t, a.base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while not ready = %d", code)
	}
}

// TestAdminToleratesSlowClients sends the request headers in two parts, as a slow or congested
// scraper does. The pause is the behaviour under test, not a wait for something to happen.
func TestAdminToleratesSlowClients(t *testing.T) {
	a := startAdmin(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(a.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: admin\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond)
	if _, err := io.WriteString(conn, "Connection: close\r\n\r\n"); err != nil {
		t.Fatalf("server hung up on a slow client: %v", err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading response after a 250ms pause in the headers: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestAdminListenFailure(t *testing.T) {
	logger, _ := jsonLogger(t)
	err := Admin{Addr: "256.0.0.1:0", Gatherer: prometheus.NewRegistry(), Logger: logger}.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("for %s", "admin")) {
		t.Fatalf("Admin.Run on a bad address = %v, want an error naming the admin listener", err)
	}
}

func TestAdminProfilingIsOptIn(t *testing.T) {
	t.Run("off by default", func(t *testing.T) {
		t.Setenv(ProfilingEnv, "")
		a := startAdmin(t)
		defer http.DefaultClient.CloseIdleConnections()
		if code, _ := get(t, a.base+"/debug/pprof/"); code != http.StatusNotFound {
			t.Fatalf("/debug/pprof/ without %s=1: status %d, want 404", ProfilingEnv, code)
		}
	})
	t.Run("on", func(t *testing.T) {
		t.Setenv(ProfilingEnv, "1")
		a := startAdmin(t)
		defer http.DefaultClient.CloseIdleConnections()
		if code, body := get(t, a.base+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
			t.Fatalf("/debug/pprof/ with %s=1: status %d", ProfilingEnv, code)
		}
	})
}

package sdsload

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/stack"
)

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := Summarize(d)
	want := Summary{N: 100, Min: time.Millisecond, P50: 50 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}
	if got != want {
		t.Fatalf("Summarize = %+v, want %+v", got, want)
	}
	if d[0] != 100*time.Millisecond {
		t.Fatal("Summarize sorted its argument")
	}
}

func TestMetric(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`# HELP portcullis_kms_sign_total x
portcullis_kms_sign_total{result="ok"} 1000
portcullis_kms_sign_total{result="invalid"} 3
portcullis_kms_sign_total_other 7
go_memstats_heap_inuse_bytes 4.5e+06
`))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"portcullis_kms_sign_total", []string{`result="ok"`}, 1000},
		{"portcullis_kms_sign_total", nil, 1003},
		{"go_memstats_heap_inuse_bytes", nil, 4.5e6},
	} {
		if got, err := Metric(ctx, addr, c.name, c.labels...); err != nil || got != c.want {
			t.Errorf("Metric(%s, %v) = %v, %v; want %v", c.name, c.labels, got, err, c.want)
		}
	}
	if _, err := Metric(ctx, addr, "portcullis_kms_sign_total", `result="error"`); !errors.Is(err, ErrNoSample) {
		t.Errorf("absent sample: err %v, want ErrNoSample", err)
	}
}

func TestWriteManifests(t *testing.T) {
	dir := t.TempDir()
	pods, err := WriteManifests(dir, "node-x", 6, 3)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := stack.LoadPods(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 6 || len(pods) != 6 {
		t.Fatalf("wrote %d pods, read back %d, want 6", len(pods), len(loaded))
	}
	ids := map[string]bool{}
	for i, p := range loaded {
		if p != pods[i] || p.Node != "node-x" {
			t.Fatalf("pod %d: read %+v, wrote %+v", i, p, pods[i])
		}
		ids[p.ServiceAccount] = true
	}
	if len(ids) != 3 {
		t.Fatalf("%d service accounts, want 3", len(ids))
	}
	if _, err := WriteManifests(dir, "n", 2, 3); err == nil {
		t.Fatal("more service accounts than pods: no error")
	}
}

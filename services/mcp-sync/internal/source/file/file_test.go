package file

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 10 * time.Second

// harness runs a file source over dir and records what it delivers.
type harness struct {
	t      *testing.T
	dir    string
	errors prometheus.Counter
	good   prometheus.Gauge
	logs   *syncBuffer

	mu     sync.Mutex
	states []inventory.State
	notify chan struct{}
}

func start(t *testing.T, dir string) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		dir:    dir,
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "errors"}),
		good:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "good"}),
		logs:   &syncBuffer{},
		notify: make(chan struct{}, 1),
	}
	src, err := New(Config{
		Dir:          dir,
		Debounce:     20 * time.Millisecond,
		Logger:       slog.New(slog.NewJSONHandler(h.logs, nil)),
		Errors:       h.errors,
		LastGoodLoad: h.good,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h.sink) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

func (h *harness) sink(st inventory.State) {
	h.mu.Lock()
	h.states = append(h.states, st)
	h.mu.Unlock()
	select {
	case h.notify <- struct{}{}:
	default:
	}
}

// waitFor waits until the latest delivered state satisfies cond, and returns it.
func (h *harness) waitFor(what string, cond func(inventory.State) bool) inventory.State {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		h.mu.Lock()
		var last *inventory.State
		if n := len(h.states); n > 0 {
			last = &h.states[n-1]
		}
		h.mu.Unlock()
		if last != nil && cond(*last) {
			return *last
		}
		select {
		case <-h.notify:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s; logs:\n%s", what, h.logs.String())
		}
	}
}

func (h *harness) write(name, content string) {
	h.t.Helper()
	writeFile(h.t, h.dir, name, content)
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func podNames(st inventory.State) []string {
	var out []string
	for _, p := range st.Pods {
		out = append(out, p.GetName())
	}
	return out
}

func hasPods(names ...string) func(inventory.State) bool {
	return func(st inventory.State) bool { return slices.Equal(podNames(st), names) }
}

func pod(name, node string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + ", namespace: shop}\nspec:\n  nodeName: " + node +
		"\n  containers: [{name: c, image: i}]\n---\n"
}

func TestLoadsTheExampleCluster(t *testing.T) {
	h := start(t, filepath.Join("..", "..", "..", "..", "..", "examples", "cluster"))
	st := h.waitFor("the first state", func(inventory.State) bool { return true })

	wantPods := map[string][2]string{ // name -> node, service account
		"payments/ledger-0": {"node-b", "ledger"},
		"shop/cart-0":       {"node-a", "cart"},
		"shop/frontend-0":   {"node-a", "frontend"},
		"shop/frontend-1":   {"node-b", "frontend"},
	}
	if len(st.Pods) != len(wantPods) {
		t.Fatalf("pods = %v, want %v", podNames(st), wantPods)
	}
	for _, p := range st.Pods {
		want, ok := wantPods[p.GetName()]
		if !ok || p.GetNodeName() != want[0] || p.GetServiceAccount() != want[1] {
			t.Errorf("pod %v, want node and service account %v", p, want)
		}
		if p.GetUid() == "" || p.GetPodIp() == "" {
			t.Errorf("pod %s lacks a uid or pod IP", p.GetName())
		}
	}
	var sas, nss []string
	for _, sa := range st.ServiceAccounts {
		sas = append(sas, sa.GetName())
	}
	for _, ns := range st.Namespaces {
		nss = append(nss, ns.GetName())
	}
	if want := []string{"payments/ledger", "shop/cart", "shop/frontend"}; !slices.Equal(sas, want) {
		t.Errorf("service accounts = %v, want %v", sas, want)
	}
	if want := []string{"payments", "shop"}; !slices.Equal(nss, want) {
		t.Errorf("namespaces = %v, want %v", nss, want)
	}
	if testutil.ToFloat64(h.errors) != 0 {
		t.Errorf("source errors = %v, want 0; logs:\n%s", testutil.ToFloat64(h.errors), h.logs)
	}
	if testutil.ToFloat64(h.good) == 0 {
		t.Error("last good load timestamp not set")
	}
}

func TestPicksUpAddedEditedAndRemovedFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", pod("a", "node-a"))
	h := start(t, dir)
	h.waitFor("the initial pod", hasPods("shop/a"))

	h.write("b.yml", pod("b", "node-a"))
	h.waitFor("an added file", hasPods("shop/a", "shop/b"))

	h.write("a.yaml", pod("a", "node-a")+pod("a2", "node-b"))
	h.waitFor("an edited file", hasPods("shop/a", "shop/a2", "shop/b"))

	// A new subdirectory, created and filled at once: its files arrive by event or by the
	// listing that adds the watch.
	h.write("sub/deeper/c.json", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"c","namespace":"shop"}}`)
	h.waitFor("a file in a new subdirectory", hasPods("shop/a", "shop/a2", "shop/b", "shop/c"))

	// A later file in the now watched subdirectory.
	h.write("sub/deeper/d.yaml", pod("d", "node-b"))
	h.waitFor("a second file in the subdirectory", hasPods("shop/a", "shop/a2", "shop/b", "shop/c", "shop/d"))

	// An editor's atomic save: write a hidden temporary file, rename it over the original.
	tmp := filepath.Join(dir, ".b.yml.swp")
	if err := os.WriteFile(tmp, []byte(pod("b-renamed", "node-a")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "b.yml")); err != nil {
		t.Fatal(err)
	}
	h.waitFor("an atomically saved file", hasPods("shop/a", "shop/a2", "shop/b-renamed", "shop/c", "shop/d"))

	if err := os.RemoveAll(filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a removed directory", hasPods("shop/a", "shop/a2", "shop/b-renamed"))

	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a removed file", hasPods("shop/b-renamed"))
	if testutil.ToFloat64(h.errors) != 0 {
		t.Errorf("source errors = %v, want 0; logs:\n%s", testutil.ToFloat64(h.errors), h.logs)
	}
}

func TestBrokenFileKeepsItsLastGoodObjects(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", pod("a", "node-a"))
	writeFile(t, dir, "b.yaml", pod("b", "node-b"))
	h := start(t, dir)
	h.waitFor("the initial pods", hasPods("shop/a", "shop/b"))

	// Break a.yaml; the next change to b.yaml still applies, and a's pod stays.
	h.write("a.yaml", pod("a", "node-a")+"apiVersion: v1\nkind: Pod\nmetadata: [broken\n")
	waitUntil(t, "the error to be counted", func() bool { return testutil.ToFloat64(h.errors) >= 1 })
	h.write("b.yaml", pod("b", "node-b")+pod("b2", "node-b"))
	h.waitFor("b's change despite a's error", hasPods("shop/a", "shop/b", "shop/b2"))

	logs := h.logs.String()
	if !strings.Contains(logs, filepath.Join(dir, "a.yaml")+": document 2") {
		t.Errorf("the error does not name the file and document; logs:\n%s", logs)
	}
	if got := testutil.ToFloat64(h.errors); got != 1 {
		t.Errorf("source errors = %v, want 1 (a broken file is reported once)", got)
	}

	// A strict-decode error in a new file: the file contributes nothing, others still apply.
	h.write("c.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: shop}\nspec: {nodeNmae: node-a}\n")
	waitUntil(t, "the strict-decode error", func() bool { return testutil.ToFloat64(h.errors) >= 2 })
	if !strings.Contains(h.logs.String(), "nodeNmae") {
		t.Errorf("the strict-decode error is not logged; logs:\n%s", h.logs)
	}

	// Fixing a.yaml applies its new content.
	h.write("a.yaml", pod("a-fixed", "node-a"))
	h.waitFor("the fixed file", hasPods("shop/a-fixed", "shop/b", "shop/b2"))
}

func TestMissingDirectoryIsAnError(t *testing.T) {
	src, err := New(Config{Dir: filepath.Join(t.TempDir(), "nope"), Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	err = src.Run(context.Background(), func(inventory.State) { t.Error("sink called") })
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Run = %v, want an error naming the directory", err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not waiting for timing
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLastGoodLoadWaitsForEveryFileToBeGood(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "good.yaml", pod("a", "node-a"))
	writeFile(t, dir, "broken.json", `{"apiVersion": "v1", "kind": "Pod", "metadata": {`)
	h := start(t, dir)
	h.waitFor("the good file's pod", hasPods("shop/a"))
	if got := testutil.ToFloat64(h.good); got != 0 {
		t.Errorf("last good load = %v with a broken file, want unset", got)
	}
	if !strings.Contains(h.logs.String(), "broken.json: document 1") {
		t.Errorf("the error does not name the file; logs:\n%s", h.logs)
	}
	h.write("broken.json", `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "shop"}}`)
	h.waitFor("the repaired file's pod", hasPods("shop/a", "shop/b"))
	waitUntil(t, "a good load", func() bool { return testutil.ToFloat64(h.good) > 0 })
}

func TestDuplicateObjectsKeepTheFirstFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "1.yaml", pod("a", "node-a"))
	writeFile(t, dir, "2.yaml", pod("a", "node-b"))
	h := start(t, dir)
	st := h.waitFor("the pod", hasPods("shop/a"))
	if got := st.Pods[0].GetNodeName(); got != "node-a" {
		t.Errorf("shop/a is on %s, want node-a from the first file", got)
	}
	if testutil.ToFloat64(h.errors) != 1 || !strings.Contains(h.logs.String(), "2.yaml") {
		t.Errorf("the duplicate was not reported (errors %v); logs:\n%s", testutil.ToFloat64(h.errors), h.logs)
	}
}

package kube_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/kube"
	"github.com/portcullis-mesh/portcullis/tools/kubetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

// recorder applies the source's updates to a map, the way the snapshot manager would.
type recorder struct {
	mu      sync.Mutex
	updates int
	first   *inventory.Update
	objects map[inventory.Kind]map[string]inventory.Object
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{objects: map[inventory.Kind]map[string]inventory.Object{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) sink(u inventory.Update) {
	r.mu.Lock()
	if r.first == nil {
		r.first = &u
	}
	r.updates++
	if u.Full {
		r.objects = map[inventory.Kind]map[string]inventory.Object{}
	}
	for _, c := range u.Changes {
		if r.objects[c.Kind] == nil {
			r.objects[c.Kind] = map[string]inventory.Object{}
		}
		if c.Object == nil {
			delete(r.objects[c.Kind], c.Name)
		} else {
			r.objects[c.Kind][c.Name] = c.Object
		}
	}
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) get(k inventory.Kind, name string) inventory.Object {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.objects[k][name]
}

// waitFor waits until cond holds (it is checked after every update, and every 20ms for conditions
// on metrics) or fails t.
func (r *recorder) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-r.changed:
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func startCluster(t *testing.T) *kubetest.Cluster {
	t.Helper()
	crds, err := kubetest.ChartCRDs()
	if err != nil {
		t.Fatal(err)
	}
	return kubetest.Start(t, kubetest.Options{CRDDirs: []string{crds}, Users: []string{"mcp-sync", "nobody"}})
}

// bindChartRole gives user exactly the chart's ClusterRole for mcp-sync.
func bindChartRole(t *testing.T, c *kubetest.Cluster, user string) {
	t.Helper()
	ctx := context.Background()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx, root+"/charts/portcullis/charts/mcp-sync/files/clusterrole.yaml"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "portcullis-mcp-sync"},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: user, APIGroup: "rbac.authorization.k8s.io"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func apply(t *testing.T, c *kubetest.Cluster, manifest string) {
	t.Helper()
	objs, err := kubetest.ParseManifests([]byte(manifest))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyObjects(context.Background(), objs...); err != nil {
		t.Fatal(err)
	}
}

func createPod(t *testing.T, c *kubetest.Cluster, name, node string, labels map[string]string) *corev1.Pod {
	t.Helper()
	p, err := c.Client.CoreV1().Pods("shop").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "web",
			Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// forceDelete removes a pod at once: with spec.nodeName set and no kubelet to confirm, a graceful
// delete would only mark it terminating (and a terminating pod still runs, so stays served).
var forceDelete = metav1.DeleteOptions{GracePeriodSeconds: new(int64)}

type running struct {
	cancel context.CancelFunc
	done   chan error
}

func runSource(t *testing.T, c *kubetest.Cluster, user string, reg *prometheus.Registry, sink func(inventory.Update)) (*metrics.Metrics, *running) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.UserConfig(user))
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(reg)
	src, err := kube.New(kube.Config{Dynamic: dyn, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Errors: m.SourceErrors, Malformed: m.Malformed, LastGoodLoad: m.LastGoodLoad})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- src.Run(ctx, sink) }()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return m, r
}

const shop = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: retail}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: security.portcullis.dev/v1alpha1
kind: TLSPolicy
metadata: {name: strict, namespace: shop}
spec: {serverMode: STRICT}
---
apiVersion: security.portcullis.dev/v1alpha1
kind: ScopeConfig
metadata: {name: canary, namespace: shop}
spec:
  selector: {matchLabels: {security.portcullis.dev/pod-ip: 10.0.0.7}}
  policy: strict
---
apiVersion: security.portcullis.dev/v1alpha1
kind: KeySecret
metadata: {name: api-key, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  data: {token: c2VjcmV0}
`

// TestWatchesEveryKind runs the source on a real API server as a user holding only the chart's
// ClusterRole: the first update is the full state, later changes arrive one by one, a malformed
// object is named in the metric and skipped, and a restart of the API server loses nothing.
func TestWatchesEveryKind(t *testing.T) {
	c := startCluster(t)
	bindChartRole(t, c, "mcp-sync")
	apply(t, c, shop)
	createPod(t, c, "web-0", "node-a", map[string]string{"app": "web"})

	rec := newRecorder()
	m, _ := runSource(t, c, "mcp-sync", prometheus.NewRegistry(), rec.sink)
	rec.waitFor(t, "the initial state", func() bool { return rec.get(inventory.Pod, "shop/web-0") != nil })
	rec.mu.Lock()
	first := rec.first
	rec.mu.Unlock()
	if !first.Full {
		t.Fatal("the first update is not full")
	}
	for _, want := range []struct {
		kind inventory.Kind
		name string
	}{
		{inventory.Namespace, "shop"}, {inventory.ServiceAccount, "shop/web"}, {inventory.TLSPolicy, "shop/strict"},
		{inventory.ScopeConfig, "shop/canary"}, {inventory.KeySecret, "shop/api-key"}, {inventory.Pod, "shop/web-0"},
	} {
		found := false
		for _, ch := range first.Changes {
			found = found || (ch.Kind == want.kind && ch.Name == want.name)
		}
		if !found {
			t.Errorf("the initial update lacks %s %s", want.kind, want.name)
		}
	}
	ks := rec.get(inventory.KeySecret, "shop/api-key").(*mcpv1.KeySecret)
	if string(ks.GetData()["token"]) != "secret" || ks.GetSelector().GetMatchLabels()["app"] != "web" {
		t.Errorf("KeySecret read as %v", ks)
	}
	if p := rec.get(inventory.Pod, "shop/web-0").(*mcpv1.Pod); p.GetNodeName() != "node-a" || p.GetUid() == "" {
		t.Errorf("pod read as %v", p)
	}

	// Incremental changes: a pod added and one deleted.
	createPod(t, c, "web-1", "node-b", nil)
	rec.waitFor(t, "pod web-1", func() bool { return rec.get(inventory.Pod, "shop/web-1") != nil })
	if err := c.Client.CoreV1().Pods("shop").Delete(context.Background(), "web-0", forceDelete); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "pod web-0 removed", func() bool { return rec.get(inventory.Pod, "shop/web-0") == nil })

	// A selector the schema lets through but the API's own rules reject: named, skipped, and
	// the last good version stays.
	apply(t, c, `
apiVersion: security.portcullis.dev/v1alpha1
kind: KeySecret
metadata: {name: api-key, namespace: shop}
spec:
  selector: {matchExpressions: [{key: app, operator: In, values: []}]}
  data: {token: bmV3}
`)
	malformed := m.Malformed.WithLabelValues(metrics.KindKeySecret, "shop", "api-key")
	rec.waitFor(t, "the malformed metric", func() bool { return testutil.ToFloat64(malformed) == 1 })
	if got := rec.get(inventory.KeySecret, "shop/api-key").(*mcpv1.KeySecret); string(got.GetData()["token"]) != "secret" {
		t.Errorf("a malformed edit replaced the last good KeySecret: %v", got)
	}
	apply(t, c, `
apiVersion: security.portcullis.dev/v1alpha1
kind: KeySecret
metadata: {name: api-key, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  data: {token: Zml4ZWQ=}
`)
	rec.waitFor(t, "the fixed KeySecret", func() bool {
		return string(rec.get(inventory.KeySecret, "shop/api-key").(*mcpv1.KeySecret).GetData()["token"]) == "fixed"
	})
	if n := testutil.CollectAndCount(m.Malformed); n != 0 {
		t.Errorf("%d malformed series remain after the fix", n)
	}

	// The API server goes away and comes back; changes made after it returns arrive.
	c.StopAPIServer()
	if err := c.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	createPod(t, c, "web-2", "node-a", nil)
	if err := c.Client.CoreV1().Pods("shop").Delete(context.Background(), "web-1", forceDelete); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "changes after the restart", func() bool {
		return rec.get(inventory.Pod, "shop/web-2") != nil && rec.get(inventory.Pod, "shop/web-1") == nil
	})
}

// TestForbiddenNamesVerbAndResource: without the ClusterRole the source fails at start with an
// error that says what to grant.
func TestForbiddenNamesVerbAndResource(t *testing.T) {
	c := startCluster(t)
	dyn, err := dynamic.NewForConfig(c.UserConfig("nobody"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := kube.New(kube.Config{Dynamic: dyn, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = src.Run(ctx, func(inventory.Update) { t.Error("a forbidden source delivered an update") })
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want a forbidden error", err)
	}
	for _, want := range []string{"forbidden", "list", "watch", "pods"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

package gatewaycert_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	testingclock "k8s.io/utils/clock/testing"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/gatewaycert"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
	"github.com/portcullis-mesh/portcullis/tools/kubetest"
)

func podChange(name, sa string) inventory.Change {
	return inventory.Change{Kind: inventory.Pod, Name: "shop/" + name,
		Object: &mcpv1.Pod{Name: "shop/" + name, Namespace: "shop", PodName: name, NodeName: "node-a", ServiceAccount: sa}}
}

// On a real kube-apiserver with RBAC: the allowed list is what SubjectAccessReviews say, a new
// pod's service account is asked at once, and a revoked RoleBinding takes effect when the
// review TTL has passed (the controller's clock is fake, the API server is real).
func TestAllowedServiceAccountsFollowRBAC(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	ctx := context.Background()
	objs, err := kubetest.ParseManifests([]byte(`
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: gw, namespace: shop}
rules:
- {apiGroups: [""], resources: [secrets], resourceNames: [gw-tls], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: gw, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: gw}
subjects:
- {kind: ServiceAccount, name: gateway, namespace: shop}
- {kind: ServiceAccount, name: edge, namespace: shop}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyObjects(ctx, objs...); err != nil {
		t.Fatal(err)
	}
	crt, key := benchPair(t, 1)
	if _, err := c.Client.CoreV1().Secrets("shop").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "gw-tls", Labels: map[string]string{gatewaycert.OptInLabel: "true"}},
		Type:       corev1.SecretTypeTLS, Data: map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	clk := testingclock.NewFakeClock(time.Now())
	rec := &recorder{certs: map[string]*mcpv1.GatewayCertificate{}, change: make(chan struct{}, 1)}
	reviews := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "reviews"}, []string{"result"})
	ctl, err := gatewaycert.New(gatewaycert.Config{Client: c.Client, Snapshots: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"reason"}), Reviews: reviews,
		ReviewTTL: time.Minute, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ctl.ObservePods(inventory.Update{Full: true, Changes: []inventory.Change{podChange("gw-0", "gateway"), podChange("web-0", "web")}})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ctl.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	allowed := func(want ...string) func() bool {
		return func() bool {
			gc, _ := rec.get("shop/gw-tls")
			return gc != nil && slices.Equal(gc.GetAllowedServiceAccounts(), want)
		}
	}
	waitFor(t, rec, allowed("shop/gateway"))

	// A new pod's service account is asked at once, not at the next TTL.
	ctl.ObservePods(inventory.Update{Changes: []inventory.Change{podChange("edge-0", "edge")}})
	waitFor(t, rec, allowed("shop/edge", "shop/gateway"))
	asked := testutil.ToFloat64(reviews.WithLabelValues("allowed")) + testutil.ToFloat64(reviews.WithLabelValues("denied"))
	if asked != 3 {
		t.Errorf("%v reviews for 3 service accounts and 1 Secret, want 3 (answers are cached)", asked)
	}

	// Revoke edge; within the TTL the cached answer stands, after it the new one is published.
	rb, err := c.Client.RbacV1().RoleBindings("shop").Get(ctx, "gw", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rb.Subjects = []rbacv1.Subject{{Kind: "ServiceAccount", Name: "gateway", Namespace: "shop"}}
	if _, err := c.Client.RbacV1().RoleBindings("shop").Update(ctx, rb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Minute)
	waitFor(t, rec, allowed("shop/gateway"))
}

package kubetest_test

import (
	"context"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/portcullis-mesh/portcullis/tools/kubetest"
)

// TestCluster runs the real API server with the chart's CRDs and ClusterRole: a CR is stored, the
// role lets mcp-sync's user list it and nothing more, and TokenRequest issues a pod-bound token.
func TestCluster(t *testing.T) {
	crds, err := kubetest.ChartCRDs()
	if err != nil {
		t.Fatal(err)
	}
	c := kubetest.Start(t, kubetest.Options{CRDDirs: []string{crds}, Users: []string{"mcp-sync"}})
	ctx := context.Background()

	root, _ := kubetest.RepoRoot()
	if err := c.Apply(ctx, root+"/charts/portcullis/charts/mcp-sync/files/clusterrole.yaml"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "mcp-sync"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "portcullis-mcp-sync"},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: "mcp-sync", APIGroup: "rbac.authorization.k8s.io"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := kubetest.ParseManifests([]byte(`
apiVersion: security.portcullis.dev/v1alpha1
kind: KeySecret
metadata: {name: api-key, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  data: {token: c2VjcmV0}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyObjects(ctx, objs...); err != nil {
		t.Fatal(err)
	}

	dyn, err := dynamic.NewForConfig(c.UserConfig("mcp-sync"))
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "security.portcullis.dev", Version: "v1alpha1", Resource: "keysecrets"}
	list, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("mcp-sync's role lists keysecrets: %v items, err %v", len(list.Items), err)
	}
	// mcp-sync lists and watches Secrets (the opted-in gateway certificates, by label), but may not
	// get one by name, nor change any.
	secrets := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"})
	if _, err := secrets.Namespace("default").List(ctx, metav1.ListOptions{LabelSelector: "portcullis.dev/gateway-certificate=true"}); err != nil {
		t.Fatalf("mcp-sync's role must list opted-in secrets: %v", err)
	}
	if _, err = secrets.Namespace("default").Get(ctx, "anything", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("mcp-sync's role must not get a secret by name, got %v", err)
	}
	if err = secrets.Namespace("default").Delete(ctx, "anything", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("mcp-sync's role must not delete secrets, got %v", err)
	}

	bad, _ := kubetest.ParseManifests([]byte(`
apiVersion: security.portcullis.dev/v1alpha1
kind: TLSPolicy
metadata: {name: bad, namespace: default}
spec: {serverMode: SOMETIMES}
`))
	if err := c.ApplyObjects(ctx, bad...); err == nil {
		t.Fatal("the CRD schema accepted serverMode SOMETIMES")
	}

	if _, err := c.Client.CoreV1().ServiceAccounts("default").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := c.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "web",
			Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aud := []string{"portcullis"}
	tr, err := c.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "web", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: aud,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil || tr.Status.Token == "" {
		t.Fatalf("token request: %v", err)
	}
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/tools/kubetest"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// kubeEnv is the whole suite on a real kube-apiserver: mcp-sync with -source kube, citadel and
// the agents verifying projected service-account tokens against the API server's JWKS.
type kubeEnv struct {
	kube  *kubetest.Cluster
	stack *stack.Stack
}

func startKube(t *testing.T) *kubeEnv {
	t.Helper()
	crds, err := kubetest.ChartCRDs()
	if err != nil {
		t.Fatal(err)
	}
	c := kubetest.Start(t, kubetest.Options{CRDDirs: []string{crds}, Users: []string{"mcp-sync", "portcullis-agent"}})
	ctx := context.Background()
	root, _ := kubetest.RepoRoot()
	if err := c.Apply(ctx, filepath.Join(root, "charts/portcullis/charts/mcp-sync/files/clusterrole.yaml")); err != nil {
		t.Fatal(err)
	}
	bind(t, c, "mcp-sync", "portcullis-mcp-sync")
	// Reading /openid/v1/jwks is what this built-in role grants (to service accounts by default).
	bind(t, c, "portcullis-agent", "system:service-account-issuer-discovery")
	kubeconfig, err := c.Kubeconfig("mcp-sync")
	if err != nil {
		t.Fatal(err)
	}
	bearer, err := c.TokenFile("portcullis-agent")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, c, `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api, namespace: shop}
---
apiVersion: security.portcullis.dev/v1alpha1
kind: TLSPolicy
metadata: {name: strict, namespace: shop}
spec: {serverMode: STRICT}
---
apiVersion: security.portcullis.dev/v1alpha1
kind: TLSPolicy
metadata: {name: permissive, namespace: shop}
spec: {serverMode: PERMISSIVE}
---
apiVersion: security.portcullis.dev/v1alpha1
kind: ScopeConfig
metadata: {name: rollout, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  policy: permissive
---
apiVersion: security.portcullis.dev/v1alpha1
kind: KeySecret
metadata: {name: web-key, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  data: {token: c2VjcmV0}
`)
	createPod(t, c, "web-0", "web", "node-a", map[string]string{"app": "web"})
	createPod(t, c, "api-0", "api", "node-b", map[string]string{"app": "api"})

	tokenFlags := []string{"-token-issuer", kubetest.Issuer, "-token-jwks-file", "",
		"-token-jwks-url", c.Host() + "/openid/v1/jwks", "-token-jwks-ca", c.CAFile(), "-token-jwks-bearer-file", bearer}
	dir, err := os.MkdirTemp("", "pc-")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := stack.Start(sctx, stack.Options{
		BinDir: binDir, Dir: dir, Manifests: t.TempDir(), Nodes: []string{"node-a", "node-b"},
		Extra: map[string][]string{
			stack.MCPSync:   {"-source", "kube", "-kubeconfig", kubeconfig},
			stack.Citadel:   tokenFlags,
			stack.NodeAgent: tokenFlags,
		},
	})
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			for _, n := range []string{stack.MCPSync, stack.Citadel, "nodeagent-node-a", "nodeagent-node-b"} {
				if b, err := os.ReadFile(filepath.Join(dir, "logs", n+".log")); err == nil {
					t.Logf("--- %s log:\n%s", n, tail(string(b), 30))
				}
			}
		}
		os.RemoveAll(dir)
	})
	return &kubeEnv{kube: c, stack: s}
}

func bind(t *testing.T, c *kubetest.Cluster, user, role string) {
	t.Helper()
	_, err := c.Client.RbacV1().ClusterRoleBindings().Create(context.Background(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user + "-" + role},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
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

func createPod(t *testing.T, c *kubetest.Cluster, name, sa, node string, labels map[string]string) *corev1.Pod {
	t.Helper()
	p, err := c.Client.CoreV1().Pods("shop").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// deletePod removes a pod at once (no kubelet would confirm a graceful delete).
func deletePod(t *testing.T, c *kubetest.Cluster, name string) {
	t.Helper()
	if err := c.Client.CoreV1().Pods("shop").Delete(context.Background(), name,
		metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
}

// podToken asks the API server for a token bound to the pod, as the kubelet does for a projected
// service-account token volume.
func podToken(t *testing.T, c *kubetest.Cluster, name string) (string, stack.Pod) {
	t.Helper()
	ctx := context.Background()
	p, err := c.Client.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := c.Client.CoreV1().ServiceAccounts("shop").CreateToken(ctx, p.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{stack.TokenAudience},
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token, stack.Pod{Namespace: "shop", Name: p.Name, UID: string(p.UID), ServiceAccount: p.Spec.ServiceAccountName, Node: p.Spec.NodeName}
}

// agentView subscribes to one mcp-sync type as a node's agent would (its own certificate) and
// records the resources it is sent.
type agentView struct {
	mu        sync.Mutex
	pushes    int // responses applied
	resources map[string]proto.Message
	newMsg    func() proto.Message
}

func (v *agentView) Apply(rs []*anypb.Any) error {
	next := map[string]proto.Message{}
	for _, r := range rs {
		m := v.newMsg()
		if err := r.UnmarshalTo(m); err != nil {
			return err
		}
		next[m.(interface{ GetName() string }).GetName()] = m
	}
	v.mu.Lock()
	v.resources = next
	v.pushes++
	v.mu.Unlock()
	return nil
}

func (v *agentView) pushCount() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pushes
}

func (v *agentView) names() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for n := range v.resources {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (v *agentView) get(name string) proto.Message {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.resources[name]
}

func watchAs[M proto.Message](t *testing.T, s *stack.Stack, node, typeURL string, newMsg func() M) *agentView {
	t.Helper()
	id, err := servicetls.NodeAgentID(s.TrustDomain(), node)
	if err != nil {
		t.Fatal(err)
	}
	ident, err := s.Identity(fmt.Sprintf("watch-%s-%d", node, time.Now().UnixNano()), id)
	if err != nil {
		t.Fatal(err)
	}
	mcpID, _ := servicetls.ServiceID(s.TrustDomain(), servicetls.MCPSync)
	conn, err := grpc.NewClient(s.Addr(stack.MCPSync), grpc.WithTransportCredentials(ident.ClientCredentials(mcpID)))
	if err != nil {
		t.Fatal(err)
	}
	v := &agentView{newMsg: func() proto.Message { return newMsg() }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = mcpclient.Watch(ctx, mcpclient.Config{Conn: conn, NodeID: node, TypeURL: typeURL, Apply: v,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	t.Cleanup(func() { cancel(); <-done; conn.Close() })
	return v
}

// eventually polls cond until it holds or 30s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling another process's state
	}
}

func TestKubernetes(t *testing.T) {
	env := startKube(t)
	c, s := env.kube, env.stack
	podsA := watchAs(t, s, "node-a", mcpclient.PodTypeURL, func() *mcpv1.Pod { return &mcpv1.Pod{} })
	podsB := watchAs(t, s, "node-b", mcpclient.PodTypeURL, func() *mcpv1.Pod { return &mcpv1.Pod{} })
	keysA := watchAs(t, s, "node-a", mcpclient.KeySecretTypeURL, func() *mcpv1.KeySecret { return &mcpv1.KeySecret{} })
	keysB := watchAs(t, s, "node-b", mcpclient.KeySecretTypeURL, func() *mcpv1.KeySecret { return &mcpv1.KeySecret{} })
	scopesB := watchAs(t, s, "node-b", mcpclient.ScopeConfigTypeURL, func() *mcpv1.ScopeConfig { return &mcpv1.ScopeConfig{} })

	t.Run("pods reach their node's agent only", func(t *testing.T) {
		eventually(t, "node views", func() bool {
			return slices.Equal(podsA.names(), []string{"shop/web-0"}) && slices.Equal(podsB.names(), []string{"shop/api-0"})
		})
	})

	t.Run("a TokenRequest token gets its SVID over SDS", func(t *testing.T) {
		tok, p := podToken(t, c, "web-0")
		svid, err := stack.FetchSVID(context.Background(), s.Socket("node-a"), sdsclient.Credential{Token: tok}, "sidecar~"+p.Key())
		if err != nil {
			t.Fatal(err)
		}
		if got := svid.ID.String(); got != "spiffe://cluster.local/ns/shop/sa/web" {
			t.Fatalf("SVID %s", got)
		}
		// The same token on the other node's socket is refused: the pod is not there.
		if _, err := stack.FetchSVID(context.Background(), s.Socket("node-b"), sdsclient.Credential{Token: tok}, "sidecar~"+p.Key()); err == nil {
			t.Fatal("node-b's agent served a pod of node-a")
		}
	})

	t.Run("a KeySecret reaches only nodes hosting its selected pods", func(t *testing.T) {
		eventually(t, "node-a's KeySecret", func() bool { return slices.Equal(keysA.names(), []string{"shop/web-key"}) })
		if got := keysB.names(); len(got) != 0 {
			t.Fatalf("node-b received KeySecrets %v", got)
		}
		if ks := keysA.get("shop/web-key").(*mcpv1.KeySecret); string(ks.GetData()["token"]) != "secret" {
			t.Fatalf("node-a's KeySecret data = %q", ks.GetData()["token"])
		}
		// A selected pod lands on node-b: now node-b gets it too.
		createPod(t, c, "web-1", "web", "node-b", map[string]string{"app": "web"})
		eventually(t, "node-b's KeySecret", func() bool { return slices.Equal(keysB.names(), []string{"shop/web-key"}) })
		deletePod(t, c, "web-1")
		eventually(t, "node-b losing the KeySecret", func() bool { return len(keysB.names()) == 0 })
	})

	t.Run("editing a ScopeConfig reaches the agents", func(t *testing.T) {
		eventually(t, "the ScopeConfig", func() bool {
			sc, _ := scopesB.get("shop/rollout").(*mcpv1.ScopeConfig)
			return sc.GetPolicy() == "permissive"
		})
		apply(t, c, `
apiVersion: security.portcullis.dev/v1alpha1
kind: ScopeConfig
metadata: {name: rollout, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  policy: strict
`)
		eventually(t, "the edited ScopeConfig", func() bool {
			sc, _ := scopesB.get("shop/rollout").(*mcpv1.ScopeConfig)
			return sc.GetPolicy() == "strict"
		})
	})

	t.Run("API server restarted mid-run loses no update", func(t *testing.T) {
		// Created right before the stop: its watch event may or may not get out in time.
		createPod(t, c, "web-2", "web", "node-a", map[string]string{"app": "web"})
		scopePushes := scopesB.pushCount()
		c.StopAPIServer()
		// While it is down, mcp-sync serves its last state, also to an agent that connects now.
		late := watchAs(t, s, "node-a", mcpclient.PodTypeURL, func() *mcpv1.Pod { return &mcpv1.Pod{} })
		eventually(t, "a view served while the API server is down", func() bool { return slices.Contains(late.names(), "shop/web-0") })
		if err := c.StartAPIServer(); err != nil {
			t.Fatal(err)
		}
		createPod(t, c, "api-1", "api", "node-b", nil)
		deletePod(t, c, "api-0")
		eventually(t, "the views after the restart", func() bool {
			return slices.Equal(podsA.names(), []string{"shop/web-0", "shop/web-2"}) && slices.Equal(podsB.names(), []string{"shop/api-1"})
		})
		// No ScopeConfig changed across the restart, so however client-go resumed (watch from the
		// last resource version, or a relist), nothing was pushed again.
		if got := scopesB.pushCount(); got != scopePushes {
			t.Errorf("node-b got %d ScopeConfig pushes across the restart, want none", got-scopePushes)
		}
		// A pod created after the restart gets its SVID: the agents' keys still verify.
		tok, p := podToken(t, c, "api-1")
		if _, err := stack.FetchSVID(context.Background(), s.Socket("node-b"), sdsclient.Credential{Token: tok}, "sidecar~"+p.Key()); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a token for a deleted pod is refused", func(t *testing.T) {
		tok, p := podToken(t, c, "web-2")
		if _, err := stack.FetchSVID(context.Background(), s.Socket("node-a"), sdsclient.Credential{Token: tok}, "sidecar~"+p.Key()); err != nil {
			t.Fatalf("before the delete: %v", err)
		}
		deletePod(t, c, "web-2")
		eventually(t, "node-a's view without web-2", func() bool { return slices.Equal(podsA.names(), []string{"shop/web-0"}) })
		var refusal error
		eventually(t, "the agent refusing the token", func() bool {
			_, refusal = stack.FetchSVID(context.Background(), s.Socket("node-a"), sdsclient.Credential{Token: tok}, "sidecar~"+p.Key())
			return refusal != nil
		})
		if status.Code(refusal) != codes.PermissionDenied || !strings.Contains(refusal.Error(), "shop/web-2 is not on node node-a") {
			t.Fatalf("refusal %v, want PermissionDenied because the pod is gone", refusal)
		}
	})
}

package convert_test

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/convert"
)

func object(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
}

func TestCustomResources(t *testing.T) {
	ks, err := convert.KeySecret(object(t, `
kind: KeySecret
metadata: {name: api, namespace: shop, uid: u1}
spec:
  selector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: NotIn, values: [db]}]}
  data: {token: c2VjcmV0}
`))
	if err != nil {
		t.Fatal(err)
	}
	if ks.GetName() != "shop/api" || string(ks.GetData()["token"]) != "secret" || ks.GetUid() != "u1" {
		t.Errorf("KeySecret = %v", ks)
	}
	sel, err := convert.Selector(ks.GetSelector())
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(convert.PodLabels(&mcpv1.Pod{Labels: map[string]string{"app": "web", "tier": "front"}})) ||
		sel.Matches(convert.PodLabels(&mcpv1.Pod{Labels: map[string]string{"app": "web", "tier": "db"}})) {
		t.Error("the converted selector does not match like the original")
	}

	pol, err := convert.TLSPolicy(object(t, `{kind: TLSPolicy, metadata: {name: p, namespace: shop}, spec: {serverMode: PERMISSIVE}}`))
	if err != nil {
		t.Fatal(err)
	}
	if pol.GetServerMode() != mcpv1.TLSPolicy_SERVER_MODE_PERMISSIVE || pol.GetClientMode() != mcpv1.TLSPolicy_CLIENT_MODE_MUTUAL {
		t.Errorf("TLSPolicy = %v (client mode defaults to MUTUAL)", pol)
	}

	sc, err := convert.ScopeConfig(object(t, `
kind: ScopeConfig
metadata: {name: one, namespace: shop}
spec: {selector: {matchLabels: {security.portcullis.dev/pod-ip: 10.0.0.7}}, policy: p}
`))
	if err != nil {
		t.Fatal(err)
	}
	sel, _ = convert.Selector(sc.GetSelector())
	if !sel.Matches(convert.PodLabels(&mcpv1.Pod{PodIp: "10.0.0.7"})) || sel.Matches(convert.PodLabels(&mcpv1.Pod{PodIp: "10.0.0.8"})) {
		t.Error("the pod-ip pseudo-label does not select by pod IP")
	}
}

func TestMalformedCustomResources(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"no spec", `{kind: KeySecret, metadata: {name: a, namespace: n}}`, "no spec"},
		{"no selector", `{kind: KeySecret, metadata: {name: a, namespace: n}, spec: {data: {k: YQ==}}}`, "selector is required"},
		{"In without values", `{kind: KeySecret, metadata: {name: a, namespace: n}, spec: {selector: {matchExpressions: [{key: app, operator: In, values: []}]}, data: {k: YQ==}}}`, "selector"},
		{"not base64", `{kind: KeySecret, metadata: {name: a, namespace: n}, spec: {selector: {}, data: {k: "!!"}}}`, "base64"},
		{"bad data key", `{kind: KeySecret, metadata: {name: a, namespace: n}, spec: {selector: {}, data: {"a/b": YQ==}}}`, "key"},
		{"no data", `{kind: KeySecret, metadata: {name: a, namespace: n}, spec: {selector: {}, data: {}}}`, "empty"},
		{"unknown field", `{kind: KeySecret, metadata: {name: a, namespace: n}, spec: {selector: {}, data: {k: YQ==}, extra: 1}}`, "unknown field"},
		{"bad name", `{kind: KeySecret, metadata: {name: "A_B", namespace: n}, spec: {selector: {}, data: {k: YQ==}}}`, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := convert.KeySecret(object(t, tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := convert.TLSPolicy(object(t, `{kind: TLSPolicy, metadata: {name: p, namespace: n}, spec: {serverMode: SOMETIMES}}`)); err == nil {
		t.Error("serverMode SOMETIMES accepted")
	}
	if _, err := convert.ScopeConfig(object(t, `{kind: ScopeConfig, metadata: {name: s, namespace: n}, spec: {selector: {}}}`)); err == nil {
		t.Error("a ScopeConfig without policy accepted")
	}
}

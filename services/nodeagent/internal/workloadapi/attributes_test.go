package workloadapi_test

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/workloadapi"
)

type labels map[string]map[string]string

func (l labels) Labels(ns string) (map[string]string, bool) { v, ok := l[ns]; return v, ok }

func TestAttributesFromPathAndNamespaceLabels(t *testing.T) {
	file := filepath.Join(t.TempDir(), "attributes.yaml")
	if err := os.WriteFile(file, []byte(`
rules:
  - path: /tenant/{tenant}/app/{app}
  - path: /ns/{namespace}/sa/{serviceAccount}
    namespaceLabels:
      tenant: portcullis.dev/tenant
      app: app.kubernetes.io/part-of
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := workloadapi.LoadAttributesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	a, err := workloadapi.NewAttributes(cfg, trustDomain, labels{"shop": {"portcullis.dev/tenant": "acme"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		want map[string]string
	}{
		{"spiffe://cluster.local/tenant/acme/app/store", map[string]string{"tenant": "acme", "app": "store"}},
		// A label the namespace lacks gives no attribute.
		{"spiffe://cluster.local/ns/shop/sa/cart", map[string]string{"namespace": "shop", "serviceAccount": "cart", "tenant": "acme"}},
		{"spiffe://cluster.local/ns/unknown/sa/cart", map[string]string{"namespace": "unknown", "serviceAccount": "cart"}},
		{"spiffe://cluster.local/ns/shop/sa/cart/extra", map[string]string{}},
		{"spiffe://other.example/ns/shop/sa/cart", map[string]string{}},
	} {
		if got := a.Of(spiffeid.RequireFromString(tc.id)); !maps.Equal(got, tc.want) {
			t.Errorf("%s: attributes %v, want %v", tc.id, got, tc.want)
		}
	}
}

func TestAttributesFileRefusesMistakes(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"misspelt key", "rules:\n  - path: /ns/{namespace}\n    namespaceLabel: {}\n", "field namespaceLabel not found"},
		{"relative path", "rules:\n  - path: ns/{namespace}\n", "must start with /"},
		{"repeated placeholder", "rules:\n  - path: /a/{x}/b/{x}\n", "bad or repeated placeholder"},
		{"labels without namespace", "rules:\n  - path: /a/{x}\n    namespaceLabels: {tenant: t}\n", "need a {namespace} placeholder"},
		{"no rules", "rules: []\n", "no rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "a.yaml")
			if err := os.WriteFile(file, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := workloadapi.LoadAttributesFile(file)
			if err == nil {
				_, err = workloadapi.NewAttributes(cfg, trustDomain, labels{})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

package file

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/convert"
)

// FuzzDecodeFile feeds decodeFile what anyone who can write the manifests directory (or a CRD
// object into the API server) controls. An accepted file yields only objects with valid names,
// which the "<namespace>/<name>" resource names and the wire encoding rely on.
func FuzzDecodeFile(f *testing.F) {
	examples, err := filepath.Glob("../../../../../examples/cluster/*.yaml")
	if err != nil || len(examples) == 0 {
		f.Fatalf("no example manifests (%v)", err)
	}
	for _, p := range examples {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, false)
	}
	for _, s := range []string{
		`{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}}`,
		"apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: web, namespace: shop}\n",
		"apiVersion: security.portcullis.dev/v1alpha1\nkind: TLSPolicy\nmetadata: {name: p, namespace: shop}\nspec: {serverMode: STRICT}\n",
		"apiVersion: security.portcullis.dev/v1alpha1\nkind: KeySecret\nmetadata: {name: k, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  data: {key: aGVsbG8=}\n",
		"apiVersion: security.portcullis.dev/v1alpha1\nkind: ScopeConfig\nmetadata: {name: s, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: a/b}\n",
		"---\n# only a comment\n---\n",
	} {
		f.Add([]byte(s), strings.HasPrefix(s, "{"))
	}
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		path := "dir/f.yaml"
		if asJSON {
			path = "dir/f.json"
		}
		got, err := decodeFile(path, data, discard)
		if err != nil {
			return
		}
		for _, p := range got.pods {
			if p.GetPodName() == "" || p.GetNamespace() == "" || strings.Contains(p.GetPodName()+p.GetNamespace(), "/") ||
				p.GetName() != convert.Key(p.GetNamespace(), p.GetPodName()) {
				t.Fatalf("accepted pod %q (%q in %q)", p.GetName(), p.GetPodName(), p.GetNamespace())
			}
		}
		var all []interface {
			proto.Message
			GetName() string
		}
		for _, m := range got.pods {
			all = append(all, m)
		}
		for _, m := range got.serviceAccounts {
			all = append(all, m)
		}
		for _, m := range got.namespaces {
			all = append(all, m)
		}
		for _, m := range got.keySecrets {
			all = append(all, m)
		}
		for _, m := range got.tlsPolicies {
			all = append(all, m)
		}
		for _, m := range got.scopeConfigs {
			all = append(all, m)
		}
		for _, m := range all {
			if m.GetName() == "" || strings.Count(m.GetName(), "/") > 1 {
				t.Fatalf("accepted a %T named %q", m, m.GetName())
			}
			if _, err := proto.Marshal(m); err != nil {
				t.Fatalf("accepted a %T that does not encode: %v", m, err)
			}
		}
	})
}

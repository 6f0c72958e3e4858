package file

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestDecodeFileReadsEveryDocumentAndListItem(t *testing.T) {
	const data = `---
# leading separator and a comment-only document
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  uid: u-web-0
  labels: {app: web}
spec:
  nodeName: node-a
  containers: [{name: web, image: web}]
status:
  podIP: 10.0.0.1
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored-too}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: web, namespace: shop, uid: u-sa}
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop, uid: u-ns, labels: {team: a}}
- apiVersion: v1
  kind: Pod
  metadata: {name: api-0, namespace: shop}
  spec:
    serviceAccountName: web
    containers: [{name: api, image: api}]
`
	got, err := decodeFile("dir/all.yaml", []byte(data), discard)
	if err != nil {
		t.Fatalf("decodeFile: %v", err)
	}
	wantPods := []*mcpv1.Pod{
		{Name: "default/web-0", Namespace: "default", PodName: "web-0", Uid: "u-web-0", NodeName: "node-a",
			ServiceAccount: "default", Labels: map[string]string{"app": "web"}, PodIp: "10.0.0.1"},
		{Name: "shop/api-0", Namespace: "shop", PodName: "api-0", ServiceAccount: "web"},
	}
	if len(got.pods) != len(wantPods) {
		t.Fatalf("got %d pods, want %d: %v", len(got.pods), len(wantPods), got.pods)
	}
	for i := range wantPods {
		if !proto.Equal(got.pods[i], wantPods[i]) {
			t.Errorf("pod %d = %v, want %v", i, got.pods[i], wantPods[i])
		}
	}
	wantSA := &mcpv1.ServiceAccount{Name: "shop/web", Namespace: "shop", ServiceAccount: "web", Uid: "u-sa"}
	if len(got.serviceAccounts) != 1 || !proto.Equal(got.serviceAccounts[0], wantSA) {
		t.Errorf("service accounts = %v, want [%v]", got.serviceAccounts, wantSA)
	}
	wantNS := &mcpv1.Namespace{Name: "shop", Uid: "u-ns", Labels: map[string]string{"team": "a"}}
	if len(got.namespaces) != 1 || !proto.Equal(got.namespaces[0], wantNS) {
		t.Errorf("namespaces = %v, want [%v]", got.namespaces, wantNS)
	}
}

func TestDecodeFileReadsJSON(t *testing.T) {
	const data = `{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}}`
	got, err := decodeFile("dir/ns.json", []byte(data), discard)
	if err != nil {
		t.Fatalf("decodeFile: %v", err)
	}
	if len(got.namespaces) != 1 || got.namespaces[0].GetName() != "payments" {
		t.Errorf("namespaces = %v, want payments", got.namespaces)
	}
}

func TestDecodeFileErrorsNameFileAndDocument(t *testing.T) {
	const goodPod = "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n"
	tests := []struct {
		name string
		data string
		want []string // substrings of the error
	}{
		{"bad yaml", goodPod + "---\nkind: Pod\nmetadata: [unclosed\n", []string{"dir/f.yaml: document 2"}},
		{"unknown field", goodPod + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeNmae: x}\n",
			[]string{"dir/f.yaml: document 2", "decoding Pod", "nodeNmae"}},
		{"duplicate key", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nmetadata: {name: b}\n",
			[]string{"dir/f.yaml: document 1", "decoding Namespace"}},
		{"pod without name", "apiVersion: v1\nkind: Pod\nmetadata: {namespace: shop}\n",
			[]string{"dir/f.yaml: document 1", "Pod has no metadata.name"}},
		{"invalid name", "apiVersion: v1\nkind: Pod\nmetadata: {name: a/b}\n", []string{"document 1", `"a/b" is invalid`}},
		{"no kind", "apiVersion: v1\nmetadata: {name: a}\n", []string{"document 1: no kind"}},
		{"wrong core version", "apiVersion: v2\nkind: Pod\nmetadata: {name: a}\n", []string{`apiVersion "v2"`}},
		{"bad list item", "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}}\n- {apiVersion: v1, kind: Pod, metadata: {}}\n",
			[]string{"dir/f.yaml: document 1: item 2", "no metadata.name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeFile("dir/f.yaml", []byte(tt.data), discard)
			if err == nil {
				t.Fatal("decodeFile succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestDecodeFileReadsPortcullisResources(t *testing.T) {
	const data = `
apiVersion: security.portcullis.dev/v1alpha1
kind: KeySecret
metadata: {name: api, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, data: {token: c2VjcmV0}}
---
apiVersion: security.portcullis.dev/v1alpha1
kind: TLSPolicy
metadata: {name: strict, namespace: shop}
spec: {serverMode: STRICT}
---
apiVersion: security.portcullis.dev/v1alpha1
kind: ScopeConfig
metadata: {name: canary, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, policy: strict}
`
	got, err := decodeFile("dir/crs.yaml", []byte(data), discard)
	if err != nil {
		t.Fatalf("decodeFile: %v", err)
	}
	if len(got.keySecrets) != 1 || string(got.keySecrets[0].GetData()["token"]) != "secret" ||
		len(got.tlsPolicies) != 1 || got.tlsPolicies[0].GetServerMode() != mcpv1.TLSPolicy_SERVER_MODE_STRICT ||
		len(got.scopeConfigs) != 1 || got.scopeConfigs[0].GetPolicy() != "strict" {
		t.Fatalf("decoded %+v", got)
	}
	// A malformed resource rejects the file, naming the object, like any broken manifest.
	_, err = decodeFile("dir/bad.yaml", []byte(`
apiVersion: security.portcullis.dev/v1alpha1
kind: TLSPolicy
metadata: {name: loose, namespace: shop}
spec: {serverMode: SOMETIMES}
`), discard)
	if err == nil || !strings.Contains(err.Error(), "TLSPolicy loose") {
		t.Fatalf("err = %v, want one naming TLSPolicy loose", err)
	}
}

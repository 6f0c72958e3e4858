package k8sschema_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	jsonschema "github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/yannh/kubeconform/pkg/validator"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
	"github.com/portcullis-mesh/portcullis/tools/k8sschema"
)

const kubeVersion = "v1.32.13"

var (
	genOnce sync.Once
	genDir  string
	genErr  error
)

// TestMain removes the schema directory the tests share (generating it once takes seconds).
func TestMain(m *testing.M) {
	code := m.Run()
	if genDir != "" {
		os.RemoveAll(genDir)
	}
	os.Exit(code)
}

// schemas generates the 1.32 schemas and those of the chart's CRDs into one directory.
func schemas(t *testing.T) string {
	t.Helper()
	genOnce.Do(func() {
		genDir, genErr = os.MkdirTemp("", "k8sschema-test-")
		if genErr != nil {
			return
		}
		var swagger []byte
		swagger, genErr = k8sschema.SwaggerFromModule(context.Background(), kubeVersion)
		if genErr != nil {
			return
		}
		var defs *k8sschema.Definitions
		defs, genErr = k8sschema.ParseSwagger(swagger)
		if genErr != nil {
			return
		}
		if _, genErr = defs.WriteKinds(genDir); genErr != nil {
			return
		}
		var crds []byte
		crds, genErr = chartCRDs()
		if genErr != nil {
			return
		}
		_, genErr = defs.WriteCRDs(crds, genDir)
	})
	if genErr != nil {
		t.Fatalf("generating schemas: %v", genErr)
	}
	return genDir
}

func chartCRDs() ([]byte, error) {
	root, err := workspace.Root()
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(root, "charts", "portcullis", "crds", "*.yaml"))
	if err != nil {
		return nil, err
	}
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		all = append(append(all, "\n---\n"...), b...)
	}
	return all, nil
}

func validate(t *testing.T, manifest string) validator.Result {
	t.Helper()
	v, err := validator.New([]string{k8sschema.LocationTemplate(schemas(t))}, validator.Opts{Strict: true, KubernetesVersion: "1.32.13"})
	if err != nil {
		t.Fatal(err)
	}
	results := v.Validate("test.yaml", nopCloser{strings.NewReader(manifest)})
	if len(results) != 1 {
		t.Fatalf("got %d results, want 1", len(results))
	}
	return results[0]
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }

func TestLayoutNamesFilesAsKubeconformLooksThemUp(t *testing.T) {
	dir := schemas(t)
	for _, name := range []string{
		"deployment-apps-v1.json", "pod-v1.json", "service-v1.json", "daemonset-apps-v1.json",
		"poddisruptionbudget-policy-v1.json", "networkpolicy-networking-v1.json",
		"clusterrole-rbac-v1.json", "customresourcedefinition-apiextensions-v1.json",
		"job-batch-v1.json", "persistentvolumeclaim-v1.json",
		"tlspolicy-security-v1alpha1.json", "keysecret-security-v1alpha1.json",
	} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("missing %s: %v", name, err)
		}
	}
}

// kubeconform treats a schema that does not compile as missing; every file must compile.
func TestEverySchemaCompiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(schemas(t), "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 250 {
		t.Fatalf("only %d schema files", len(files))
	}
	for _, f := range files {
		c := jsonschema.NewCompiler()
		c.DefaultDraft(jsonschema.Draft4)
		if _, err := c.Compile(f); err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
		}
	}
}

const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: citadel
  labels: {app: citadel}
spec:
  replicas: 2
  selector:
    matchLabels: {app: citadel}
  strategy:
    rollingUpdate: {maxUnavailable: 1, maxSurge: "25%"}
  template:
    metadata:
      labels: {app: citadel}
    spec:
      nodeSelector: null
      securityContext:
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: citadel
          image: portcullis/citadel:dev
          ports: [{name: grpc, containerPort: 8443}]
          resources:
            requests: {cpu: 0.1, memory: 64Mi}
            limits: {cpu: 1}
          readinessProbe:
            grpc: {port: 8443}
          livenessProbe:
            tcpSocket: {port: grpc}
          securityContext:
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
`

func TestKindsValidateStrictly(t *testing.T) {
	for _, tc := range []struct {
		name, manifest string
		wantPath       string // empty: valid
	}{
		{"valid deployment with numeric quantities and int-or-string", deployment, ""},
		{"unknown field deep in a container",
			strings.Replace(deployment, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: true\n            readOnlyRootFS: true", 1),
			"/spec/template/spec/containers/0/securityContext"},
		{"unknown top-level field", deployment + "extra: 1\n", ""},
		{"required field missing",
			strings.Replace(deployment, "- name: citadel\n          image", "- image", 1),
			"/spec/template/spec/containers/0"},
		{"wrong type", strings.Replace(deployment, "replicas: 2", "replicas: two", 1), "/spec/replicas"},
		{"bad enum-free value of a typed field", strings.Replace(deployment, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: yes-please", 1),
			"/spec/template/spec/containers/0/securityContext/readOnlyRootFilesystem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := validate(t, tc.manifest)
			if tc.name == "unknown top-level field" {
				if r.Status != validator.Invalid {
					t.Fatalf("status %v (%v), want invalid", r.Status, r.Err)
				}
				return
			}
			if tc.wantPath == "" {
				if r.Status != validator.Valid {
					t.Fatalf("status %v: %v %+v", r.Status, r.Err, r.ValidationErrors)
				}
				return
			}
			if r.Status != validator.Invalid {
				t.Fatalf("status %v (%v), want invalid", r.Status, r.Err)
			}
			var paths []string
			for _, e := range r.ValidationErrors {
				paths = append(paths, e.Path)
				if e.Path == tc.wantPath {
					return
				}
			}
			t.Fatalf("errors at %v, want one at %s (%v)", paths, tc.wantPath, r.Err)
		})
	}
}

func TestUnknownAPIVersionHasNoSchema(t *testing.T) {
	r := validate(t, strings.Replace(deployment, "apps/v1", "apps/v1beta1", 1))
	if r.Status != validator.Error || !strings.Contains(r.Err.Error(), "could not find schema") {
		t.Fatalf("status %v, err %v; want a missing schema error", r.Status, r.Err)
	}
}

// The CRD kind itself holds the recursive JSONSchemaProps; the chart's CRDs must validate.
func TestCustomResourceDefinitionsValidate(t *testing.T) {
	crds, err := chartCRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(crds), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		r := validate(t, doc)
		if r.Status != validator.Valid {
			t.Errorf("status %v: %v %+v", r.Status, r.Err, r.ValidationErrors)
		}
	}
	bad := strings.Replace(string(crds[strings.Index(string(crds), "apiVersion"):]), "openAPIV3Schema:", "openAPIV3Schema:\n          typo: true", 1)
	bad = strings.SplitN(bad, "\n---\n", 2)[0]
	if r := validate(t, bad); r.Status != validator.Invalid {
		t.Errorf("a CRD with an unknown schema keyword: status %v, want invalid", r.Status)
	}
}

const tlsPolicy = `apiVersion: security.portcullis.dev/v1alpha1
kind: TLSPolicy
metadata:
  name: strict
  namespace: shop
spec:
  serverMode: STRICT
`

func TestCustomResourcesValidateAgainstTheirCRD(t *testing.T) {
	for _, tc := range []struct {
		name, manifest string
		valid          bool
	}{
		{"valid", tlsPolicy, true},
		{"value outside the enum", strings.Replace(tlsPolicy, "STRICT", "LOOSE", 1), false},
		{"unknown spec field", tlsPolicy + "  serverMod: STRICT\n", false},
		{"unknown metadata field", strings.Replace(tlsPolicy, "namespace: shop", "namespace: shop\n  labelz: {}", 1), false},
		{"unknown top-level field", tlsPolicy + "status: {}\n", false},
		{"required field missing", strings.Replace(tlsPolicy, "serverMode: STRICT", "clientMode: MUTUAL", 1), false},
		{"null where the CRD does not allow it", strings.Replace(tlsPolicy, "serverMode: STRICT", "serverMode: STRICT\n  service: null", 1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := validate(t, tc.manifest)
			if got := r.Status == validator.Valid; got != tc.valid {
				t.Fatalf("valid = %v (status %v: %v %+v), want %v", got, r.Status, r.Err, r.ValidationErrors, tc.valid)
			}
		})
	}
}

func TestCachedGeneratesOnceAndReusesTheDirectory(t *testing.T) {
	cache := t.TempDir()
	dir, err := k8sschema.Cached(context.Background(), cache, kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "pod-v1.json")
	if err := os.WriteFile(marker, []byte(`{"marker": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := k8sschema.Cached(context.Background(), cache, kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(marker); again != dir || string(b) != `{"marker": true}` {
		t.Fatalf("second call regenerated (dir %s, was %s)", again, dir)
	}
	leftovers, _ := filepath.Glob(filepath.Join(cache, ".tmp-*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary directories left behind: %v", leftovers)
	}
}

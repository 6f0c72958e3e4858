package chartcheck_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
	"github.com/portcullis-mesh/portcullis/tools/chartcheck"
	"github.com/portcullis-mesh/portcullis/tools/k8sschema"
)

const release, namespace = "portcullis", "portcullis"

// allowed are the chart's departures from the security defaults, and why (the chart's templates
// say more).
var allowed = chartcheck.Exceptions{
	Root: map[string]string{
		"DaemonSet/portcullis-nodeagent": "creates its socket in the root-owned hostPath directory the kubelet makes",
	},
	HostPID: map[string]string{
		"DaemonSet/portcullis-nodeagent": "peer-credential attestation: SO_PEERCRED names a caller's pid in the agent's pid namespace, and its /proc files must be the host's",
	},
	Privileged: map[string]string{
		"DaemonSet/portcullis-nodeagent/nodeagent": "the CSI driver (nodeagent.csi.enabled) bind-mounts pods' sockets into the kubelet's pods directory: " +
			"Kubernetes allows mountPropagation Bidirectional only to privileged containers",
	},
}

var (
	validatorOnce sync.Once
	validator     *chartcheck.Validator
	validatorErr  error
	scratchDir    string
)

// TestMain removes the directory of the CRD schemas the tests share.
func TestMain(m *testing.M) {
	code := m.Run()
	if scratchDir != "" {
		os.RemoveAll(scratchDir)
	}
	os.Exit(code)
}

// setup finds helm and the chart, and returns a validator against the Kubernetes schemas
// (cached under .cache) and the CRDs (made once for all the tests).
func setup(t *testing.T) (context.Context, chartcheck.Helm, string, *chartcheck.Validator) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	bin, err := chartcheck.HelmBinary()
	if err != nil {
		t.Fatal(err)
	}
	root, err := workspace.Root()
	if err != nil {
		t.Fatal(err)
	}
	chart := filepath.Join(root, "charts", "portcullis")
	validatorOnce.Do(func() {
		scratchDir, validatorErr = os.MkdirTemp("", "chartcheck-crds-")
		if validatorErr == nil {
			validator, validatorErr = chartcheck.ChartValidator(ctx, filepath.Join(root, ".cache", "k8s-schemas"), chart, scratchDir)
		}
	})
	if validatorErr != nil {
		t.Fatal(validatorErr)
	}
	return ctx, chartcheck.Helm{Bin: bin, Home: t.TempDir()}, chart, validator
}

// valuesMatrix is every values file the chart is proven with: the defaults, the Vault staging
// example, and each file under ci/ (helm's convention for values files chart tests run).
func valuesMatrix(t *testing.T, chart string) map[string][]string {
	t.Helper()
	m := map[string][]string{
		"defaults":      nil,
		"vault-staging": {filepath.Join(chart, "values-vault-staging.yaml")},
	}
	ci, err := filepath.Glob(filepath.Join(chart, "ci", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ci) == 0 {
		t.Fatalf("no values files under %s/ci", chart)
	}
	for _, f := range ci {
		m["ci/"+filepath.Base(f)] = []string{f}
	}
	return m
}

func TestChartLintsRendersAndValidatesForEveryValuesFile(t *testing.T) {
	ctx, helm, chart, v := setup(t)
	for name, files := range valuesMatrix(t, chart) {
		t.Run(name, func(t *testing.T) {
			vals := chartcheck.Values{Files: files}
			if out, err := helm.Lint(ctx, chart, vals); err != nil {
				t.Fatalf("helm lint --strict: %v", err)
			} else if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Fatalf("helm lint --strict reported:\n%s", out)
			}
			manifests, err := helm.Template(ctx, chart, release, namespace, vals)
			if err != nil {
				t.Fatal(err)
			}
			ok, err := v.Validate(ctx, name, bytes.NewReader(manifests))
			if err != nil {
				t.Fatalf("kubeconform -strict against Kubernetes %s and the chart's CRDs: %v", chartcheck.KubeVersion, err)
			}
			ex := allowed
			if name == "ci/csi-disabled-values.yaml" { // without CSI the agent has no capability at all
				ex.Privileged = nil
			}
			problems, err := chartcheck.CheckPodSecurity(manifests, ex)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("security defaults: %s", p)
			}
			kinds := map[string]int{}
			for _, r := range ok {
				kinds[r.Kind]++
			}
			// Every component is there: the agents, the Deployments, the CRDs.
			for kind, least := range map[string]int{"DaemonSet": 1, "Deployment": 3, "CustomResourceDefinition": 3, "Service": 3, "PodDisruptionBudget": 1} {
				if kinds[kind] < least {
					t.Errorf("%d %s rendered, want at least %d (all: %v)", kinds[kind], kind, least, kinds)
				}
			}
			t.Logf("%d manifests valid: %v", len(ok), kinds)
		})
	}
}

// A wrong or missing value fails `helm template` (as it fails `helm install`, which runs the same
// checks) with a message that names the value.
func TestChartRejectsWrongOrMissingValuesByName(t *testing.T) {
	ctx, helm, chart, _ := setup(t)
	for _, tc := range []struct {
		name string
		set  []string
		want []string // every one must be in helm's error
	}{
		{"unknown backend", []string{"kmsAdapter.backend=bogus"}, []string{"kmsAdapter.backend"}},
		{"vault without an address", []string{"kmsAdapter.backend=vault"}, []string{"kmsAdapter.vault.address"}},
		{"vault leaf mode without a role", []string{"kmsAdapter.backend=vault", "kmsAdapter.vault.address=https://vault:8200", "kmsAdapter.vault.auth.tokenSecret=t"}, []string{"kmsAdapter.vault.role"}},
		{"vault token auth without its Secret", []string{"kmsAdapter.backend=vault", "kmsAdapter.vault.address=https://vault:8200", "kmsAdapter.vault.role=workload"}, []string{"kmsAdapter.vault.auth.tokenSecret"}},
		{"external NATS without a URL", []string{"global.nats.mode=external"}, []string{"global.nats.external.url"}},
		{"misspelt value", []string{"citadel.replica=3"}, []string{"citadel", "replica"}},
		{"wrong type", []string{"citadel.replicas=two"}, []string{"citadel.replicas"}},
		{"trust domain that is not one", []string{"global.trustDomain=Not A Domain"}, []string{"global.trustDomain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := helm.Template(ctx, chart, release, namespace, chartcheck.Values{Set: tc.set})
			if err == nil {
				t.Fatalf("helm template --set %v succeeded, want a failure naming %v", tc.set, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("helm's error does not name %q:\n%v", w, err)
				}
			}
		})
	}
}

// The validation is not vacuous: a rendered manifest with an unknown field (in a Kubernetes kind
// or in a ServiceMonitor), or of a kind no schema knows, fails and is reported with the template
// it came from.
func TestValidationCatchesWhatTheAPIServerWouldRefuse(t *testing.T) {
	ctx, helm, _, v := setup(t)
	chart := t.TempDir()
	write(t, filepath.Join(chart, "Chart.yaml"), "apiVersion: v2\nname: scratch\nversion: 0.1.0\n")
	write(t, filepath.Join(chart, "templates", "cm.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\ndata:\n  a: b\n")
	write(t, filepath.Join(chart, "templates", "svc.yaml"),
		"apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n    - port: 80\n      targetPortt: 8080\n")
	write(t, filepath.Join(chart, "templates", "unknown.yaml"),
		"apiVersion: monitoring.coreos.com/v1\nkind: PodMonitorz\nmetadata:\n  name: unknown\n")
	write(t, filepath.Join(chart, "templates", "sm.yaml"),
		"apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: sm\nspec:\n  selector: {}\n  endpoints:\n    - port: admin\n      intervall: 30s\n")
	if _, err := helm.Lint(ctx, chart, chartcheck.Values{}); err != nil {
		t.Fatalf("helm lint of the scratch chart: %v", err)
	}
	manifests, err := helm.Template(ctx, chart, "r", "ns", chartcheck.Values{})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := v.Validate(ctx, "scratch", bytes.NewReader(manifests))
	if len(ok) != 1 || ok[0].Kind != "ConfigMap" {
		t.Errorf("valid resources %v, want the ConfigMap only", ok)
	}
	if err == nil {
		t.Fatal("no validation error")
	}
	for _, w := range []string{"scratch/templates/svc.yaml", "/spec/ports/0", "scratch/templates/sm.yaml", "/spec/endpoints/0", "scratch/templates/unknown.yaml", "could not find schema for PodMonitorz"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("validation error lacks %q:\n%v", w, err)
		}
	}
}

func TestPodSecurityDefaultsAreEnforced(t *testing.T) {
	manifests := `apiVersion: apps/v1
kind: Deployment
metadata: {name: loose}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      hostNetwork: true
      containers:
        - name: app
          image: x
          securityContext:
            capabilities: {drop: [ALL], add: [NET_ADMIN]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: tight}
spec:
  template:
    spec:
      restartPolicy: Never
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: job
          image: x
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
`
	problems, err := chartcheck.CheckPodSecurity([]byte(manifests), chartcheck.Exceptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Deployment/loose: uses a host namespace (hostNetwork, hostPID or hostIPC)",
		"Deployment/loose: container app: readOnlyRootFilesystem is not true",
		"Deployment/loose: container app: allowPrivilegeEscalation is not false",
		"Deployment/loose: container app: adds capabilities [NET_ADMIN]",
		"Deployment/loose: container app: has no RuntimeDefault or Localhost seccomp profile",
		"Deployment/loose: container app: runAsNonRoot is not true",
		"Deployment/loose: container app: has no cpu request",
		"Deployment/loose: container app: has no memory request",
	}
	if !slices.Equal(problems, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
	problems, err = chartcheck.CheckPodSecurity([]byte(manifests), chartcheck.Exceptions{Root: map[string]string{"Deployment/loose": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(problems, "Deployment/loose: container app: runAsNonRoot is not true") {
		t.Fatal("the root exception was not applied")
	}
}

func TestHelmBinaryNamesTheTaskWhenMissing(t *testing.T) {
	t.Setenv(chartcheck.HelmEnv, filepath.Join(t.TempDir(), "no-helm"))
	_, err := chartcheck.HelmBinary()
	if err == nil || !strings.Contains(err.Error(), "go tool task helm") {
		t.Fatalf("err = %v, want one naming `go tool task helm`", err)
	}
}

func TestSchemaDirectoryIsCachedByVersion(t *testing.T) {
	root, err := workspace.Root()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := k8sschema.Cached(context.Background(), filepath.Join(root, ".cache", "k8s-schemas"), chartcheck.KubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(filepath.Base(dir), chartcheck.KubeVersion) {
		t.Fatalf("cache directory %s does not carry the version", dir)
	}
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || !slices.Contains(names, filepath.Join(dir, "daemonset-apps-v1.json")) {
		t.Fatalf("no daemonset-apps-v1.json in %s (%v)", dir, err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A privileged exception names one container, and waives only the checks privilege makes moot.
func TestPrivilegedExceptionIsPerContainer(t *testing.T) {
	manifests := `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: csi
          image: x
          securityContext: {privileged: true}
          resources: {requests: {cpu: 10m, memory: 16Mi}}
        - name: other
          image: x
          securityContext: {privileged: true, readOnlyRootFilesystem: true}
          resources: {requests: {cpu: 10m, memory: 16Mi}}
`
	problems, err := chartcheck.CheckPodSecurity([]byte(manifests), chartcheck.Exceptions{Privileged: map[string]string{"DaemonSet/agent/csi": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"DaemonSet/agent: container csi: readOnlyRootFilesystem is not true",
		"DaemonSet/agent: container other: allowPrivilegeEscalation is not false",
		"DaemonSet/agent: container other: is privileged",
		"DaemonSet/agent: container other: does not drop ALL capabilities",
	}
	if !slices.Equal(problems, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
}

// A hostPID exception allows the host's pid namespace only.
func TestHostPIDExceptionIsOnlyPID(t *testing.T) {
	manifests := `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      hostPID: true
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: agent
          image: x
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          resources: {requests: {cpu: 10m, memory: 16Mi}}
`
	ex := chartcheck.Exceptions{HostPID: map[string]string{"DaemonSet/agent": "test"}}
	if problems, err := chartcheck.CheckPodSecurity([]byte(manifests), ex); err != nil || len(problems) != 0 {
		t.Fatalf("hostPID with its exception: %v %v", problems, err)
	}
	withNetwork := strings.Replace(manifests, "hostPID: true", "hostPID: true\n      hostNetwork: true", 1)
	problems, err := chartcheck.CheckPodSecurity([]byte(withNetwork), ex)
	if err != nil || !slices.Equal(problems, []string{"DaemonSet/agent: uses a host namespace (hostNetwork, hostPID or hostIPC)"}) {
		t.Fatalf("hostNetwork under a hostPID exception: %v %v", problems, err)
	}
}

package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// appVersion is the chart's appVersion: the tag `go tool task images` gives the images.
const appVersion = "0.1.0"

func image(name string) string { return "ghcr.io/portcullis-mesh/" + name + ":" + appVersion }

// socketDir is the chart's default socket directory, on the node.
const socketDir = "/var/run/secrets/workload-spiffe-uds"

const (
	idAlpha = "spiffe://cluster.local/ns/apps/sa/alpha"
	idBeta  = "spiffe://cluster.local/ns/apps/sa/beta"
)

// TestChartLifecycle is what a platform team does with Portcullis, in order: install, give two
// workloads identities that they use for mTLS, see impostors refused, hand KeySecrets and a
// gateway certificate to the pods allowed them, rotate the root, upgrade, uninstall. Each step
// needs the one before; the first failure stops the rest.
func TestChartLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c := client(t)
	dumpOnFailure(t, c)
	var alpha, beta, delta *probe
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"install brings every component to Ready", func(t *testing.T) { install(ctx, t, c) }},
		{"workload pods get SVIDs over SDS and complete mTLS", func(t *testing.T) { alpha, beta = workloads(ctx, t, c) }},
		{"a pod under Pod Security restricted gets its SVID through its CSI socket", func(t *testing.T) { delta = csiWorkload(ctx, t, c) }},
		{"impostors are refused", func(t *testing.T) { impostors(ctx, t, c) }},
		{"components at idle", func(t *testing.T) { idleMemory(ctx, t, c) }},
		{"the renewal CronJob runs with its own least-privilege role", func(t *testing.T) { renewalJob(ctx, t, c) }},
		{"what the CSI volume adds to pod start-up", func(t *testing.T) { csiStartupCost(ctx, t, c) }},
		{"a KeySecret reaches the pods it selects over SDS, and only them", func(t *testing.T) { keySecretsOnCluster(ctx, t, c) }},
		{"a gateway certificate from an opted-in Secret, for the service accounts that may get it", func(t *testing.T) { gatewayCertificateOnCluster(ctx, t, c) }},
		{"root rotation through the CLI reaches the running pods", func(t *testing.T) { rotateRoot(ctx, t, c, alpha, beta) }},
		{"upgrade rolls the components and the pods keep their certificates", func(t *testing.T) { upgrade(ctx, t, c, alpha, beta, delta) }},
		{"deleting the CSI pod removes its socket", func(t *testing.T) { csiPodDeleted(ctx, t, c, delta) }},
		{"uninstall removes everything but the CRDs and the CA's claim", func(t *testing.T) { uninstall(ctx, t, c) }},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			t.Fatalf("step %q failed; the later steps depend on it", s.name)
		}
	}
}

var installedAt time.Time

func install(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	for _, ns := range []string{releaseNS, appsNS} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The chart's defaults (cluster DNS, the default StorageClass, Istio's socket directory), but
	// for images imported into the node and a rotation jitter a test can wait for.
	values := filepath.Join(suite.dir, "values.yaml")
	writeFile(t, values, `global:
  image: {pullPolicy: Never}
nodeagent:
  rotateJitter: 2s
`)
	installedAt = time.Now()
	if _, err := helm(ctx, "install", release, suite.chart, "-n", releaseNS, "-f", values, "--wait", "--timeout", "3m"); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm install --wait: %v", time.Since(installedAt).Round(time.Millisecond))
	// helm's --wait counts a DaemonSet of one node with maxUnavailable 1 as ready at once: wait
	// for the agent too (it attests to citadel once citadel is up).
	eventually(t, 3*time.Minute, "every component ready", func() error { return workloadsReady(ctx, c) })
	t.Logf("helm install → every component ready: %v", time.Since(installedAt).Round(time.Millisecond))
}

func workloads(ctx context.Context, t *testing.T, c kubernetes.Interface) (*probe, *probe) {
	for _, sa := range []string{"alpha", "beta", "gamma"} {
		if _, err := c.CoreV1().ServiceAccounts(appsNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	alpha := startProbe(ctx, t, c, probeSpec{name: "alpha", serviceAccount: "alpha"})
	// beta presents no token: the agent knows it by its peer credentials and pod cgroup alone.
	beta := startProbe(ctx, t, c, probeSpec{name: "beta", serviceAccount: "beta", noToken: true})
	st := alpha.waitSVID(ctx, t, time.Minute, "SVID", hasID(idAlpha))
	t.Logf("helm install → first SVID in a pod: %v (serial %s)", time.Since(installedAt).Round(time.Millisecond), st.Serial)
	beta.waitSVID(ctx, t, time.Minute, "SVID", hasID(idBeta))
	mutualHandshake(ctx, t, alpha, beta, idAlpha, idBeta)
	return alpha, beta
}

func hasID(id string) func(probeStatus) error {
	return func(st probeStatus) error {
		if st.SPIFFEID != id || len(st.BundleSHA256) == 0 {
			return fmt.Errorf("holds %q with %d roots (last error %q), want %s", st.SPIFFEID, len(st.BundleSHA256), st.LastError, id)
		}
		return nil
	}
}

// impostors: a pod asking for another service account's identity, and a pod presenting a token
// bound to another pod (one that no longer runs), get nothing.
func impostors(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	other := startProbe(ctx, t, c, probeSpec{name: "gamma-wants-alpha", serviceAccount: "gamma", resource: idAlpha})
	refused(ctx, t, other, "PermissionDenied")

	// A token the API server bound to a pod that has since gone.
	ghost := startProbe(ctx, t, c, probeSpec{name: "ghost", serviceAccount: "alpha"})
	tr, err := c.CoreV1().ServiceAccounts(appsNS).CreateToken(ctx, "alpha", authnTokenRequest{ghost.name, ghostUID(ctx, t, c)}.request(), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CoreV1().Pods(appsNS).Delete(ctx, ghost.name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "ghost pod gone", func() error {
		if _, err := c.CoreV1().Pods(appsNS).Get(ctx, ghost.name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ghost-token", Namespace: appsNS}, StringData: map[string]string{"token": tr.Status.Token}}
	if _, err := c.CoreV1().Secrets(appsNS).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stolen := startProbe(ctx, t, c, probeSpec{name: "stolen-token", serviceAccount: "gamma", tokenSecret: "ghost-token"})
	refused(ctx, t, stolen, "")
}

// refused waits for the probe's SDS request to fail (with code in its error, if given) and
// checks it holds no identity.
func refused(ctx context.Context, t *testing.T, p *probe, code string) {
	t.Helper()
	st := p.waitSVID(ctx, t, time.Minute, "refusal", func(st probeStatus) error {
		if st.LastError == "" || !strings.Contains(st.LastError, code) {
			return fmt.Errorf("last error %q, want one with %q", st.LastError, code)
		}
		return nil
	})
	if st.SPIFFEID != "" || st.Serial != "" {
		t.Fatalf("%s was given %s (serial %s)", p.name, st.SPIFFEID, st.Serial)
	}
	t.Logf("%s refused: %s", p.name, st.LastError)
}

// adminJob runs portcullisctl in the cluster with the admin certificate, against kms-adapter.
func adminJob(name string, args ...string) *batchv1.Job {
	mode := int32(0o440)
	base := []string{"-kms-addr=$(PORTCULLIS_KMS_ADAPTER_SERVICE_HOST):15030",
		"-tls-cert=/admin/tls.crt", "-tls-key=/admin/tls.key", "-tls-ca=/admin/ca.crt"}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: releaseNS},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To(int32(0)),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy:                corev1.RestartPolicyNever,
				AutomountServiceAccountToken: ptr.To(false),
				SecurityContext:              &corev1.PodSecurityContext{RunAsUser: ptr.To(int64(65532)), RunAsGroup: ptr.To(int64(65532)), FSGroup: ptr.To(int64(65532)), RunAsNonRoot: ptr.To(true)},
				Containers: []corev1.Container{{
					Name: "portcullisctl", Image: image("portcullisctl"), ImagePullPolicy: corev1.PullNever,
					Args:         append(base, args...),
					VolumeMounts: []corev1.VolumeMount{{Name: "admin", MountPath: "/admin", ReadOnly: true}},
				}},
				Volumes: []corev1.Volume{{Name: "admin", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: release + "-admin-tls", DefaultMode: &mode}}}},
			}},
		},
	}
}

func rotateRoot(ctx context.Context, t *testing.T, c kubernetes.Interface, alpha, beta *probe) {
	before := map[*probe]probeStatus{}
	for _, p := range []*probe{alpha, beta} {
		st, err := p.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		before[p] = st
	}
	t.Logf("prepare: %s", jobOutput(ctx, t, c, adminJob("rotate-prepare", "rotate-ca", "prepare")))
	// The next root joins the bundle at once, on the open streams.
	for _, p := range []*probe{alpha, beta} {
		p.waitSVID(ctx, t, time.Minute, "bundle with the next root", func(st probeStatus) error {
			if len(st.BundleSHA256) != 2 || !slices.Contains(st.BundleSHA256, before[p].BundleSHA256[0]) {
				return fmt.Errorf("roots %v, want the old one %v and the next", st.BundleSHA256, before[p].BundleSHA256)
			}
			return nil
		})
	}
	t.Logf("activate: %s", jobOutput(ctx, t, c, adminJob("rotate-activate", "rotate-ca", "activate")))
	// Agents re-issue within -rotate-jitter (2 s here) and push on the same streams.
	for _, p := range []*probe{alpha, beta} {
		p.waitSVID(ctx, t, time.Minute, "certificate from the next CA", func(st probeStatus) error {
			if st.Serial == before[p].Serial || st.Updates <= before[p].Updates {
				return fmt.Errorf("serial %s after %d updates, as before the rotation", st.Serial, st.Updates)
			}
			return nil
		})
	}
	mutualHandshake(ctx, t, alpha, beta, idAlpha, idBeta)
}

// renewalJob runs the chart's certificate-renewal CronJob once, as its schedule would: with
// certificates fresh from the install it keeps everything, within the Role that lets it only
// read and update the release's objects.
func renewalJob(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	cj, err := c.BatchV1().CronJobs(releaseNS).Get(ctx, release+"-bootstrap-renew", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "renew-now", Namespace: releaseNS}, Spec: cj.Spec.JobTemplate.Spec}
	out := jobOutput(ctx, t, c, job)
	for _, want := range []string{"secret/" + release + "-control-plane-ca: kept", "secret/" + release + "-citadel-tls: kept"} {
		if !strings.Contains(out, want) {
			t.Errorf("renewal job output lacks %q:\n%s", want, out)
		}
	}
}

// upgrade: the hostPath probes (alpha, beta) and the CSI one (delta, whose socket the new agent
// must listen on again) reconnect to the new agent.
func upgrade(ctx context.Context, t *testing.T, c kubernetes.Interface, alpha, beta, delta *probe) {
	before := podUIDs(ctx, t, c)
	statusBefore := map[*probe]probeStatus{}
	for _, p := range []*probe{alpha, beta, delta} {
		st, err := p.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		statusBefore[p] = st
	}
	start := time.Now()
	if _, err := helm(ctx, "upgrade", release, suite.chart, "-n", releaseNS, "--reuse-values",
		"--set", "global.logLevel=debug", "--wait", "--timeout", "5m"); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm upgrade --wait: %v", time.Since(start).Round(time.Millisecond))
	eventually(t, 2*time.Minute, "every component rolled", func() error {
		if err := workloadsReady(ctx, c); err != nil {
			return err
		}
		after := podUIDs(ctx, t, c)
		for name := range after {
			if _, ok := before[name]; ok {
				return fmt.Errorf("pod %s was not replaced", name)
			}
		}
		return nil
	})
	// The workloads were not restarted: the same pods, no container restart, and on reopened
	// streams they hold the certificates they had: the new agent restored the old one's state.
	for _, p := range []*probe{alpha, beta, delta} {
		pod, err := c.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rc := pod.Status.ContainerStatuses[0].RestartCount; rc != 0 {
			t.Fatalf("%s restarted %d times", p.name, rc)
		}
		want := statusBefore[p]
		p.waitSVID(ctx, t, 2*time.Minute, "its certificate again, from the new agent", func(st probeStatus) error {
			if st.Serial != want.Serial || st.Updates <= want.Updates {
				return fmt.Errorf("serial %s, %d updates (before: %s, %d); last error %q", st.Serial, st.Updates, want.Serial, want.Updates, st.LastError)
			}
			return nil
		})
	}
	mutualHandshake(ctx, t, alpha, beta, idAlpha, idBeta)
}

func uninstall(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	if _, err := helm(ctx, "uninstall", release, "-n", releaseNS, "--wait", "--timeout", "5m"); err != nil {
		t.Fatal(err)
	}
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	eventually(t, 2*time.Minute, "release objects gone", func() error {
		pods, err := c.CoreV1().Pods(releaseNS).List(ctx, sel)
		if err != nil || len(pods.Items) > 0 {
			return fmt.Errorf("%d pods left (%v)", len(pods.Items), err)
		}
		return nil
	})
	deps, _ := c.AppsV1().Deployments(releaseNS).List(ctx, metav1.ListOptions{})
	dss, _ := c.AppsV1().DaemonSets(releaseNS).List(ctx, metav1.ListOptions{})
	svcs, _ := c.CoreV1().Services(releaseNS).List(ctx, metav1.ListOptions{})
	if n := len(deps.Items) + len(dss.Items) + len(svcs.Items); n != 0 {
		t.Errorf("%d deployments, daemonsets or services left", n)
	}
	secrets, _ := c.CoreV1().Secrets(releaseNS).List(ctx, metav1.ListOptions{})
	for _, s := range secrets.Items {
		t.Errorf("secret %s left after uninstall", s.Name)
	}
	cms, _ := c.CoreV1().ConfigMaps(releaseNS).List(ctx, metav1.ListOptions{})
	for _, cm := range cms.Items {
		if cm.Name != "kube-root-ca.crt" {
			t.Errorf("configmap %s left after uninstall", cm.Name)
		}
	}
	sas, _ := c.CoreV1().ServiceAccounts(releaseNS).List(ctx, metav1.ListOptions{})
	for _, sa := range sas.Items {
		if sa.Name != "default" {
			t.Errorf("service account %s left after uninstall", sa.Name)
		}
	}
	_, err := c.RbacV1().ClusterRoles().Get(ctx, release+"-mcp-sync", metav1.GetOptions{})
	absent(t, "ClusterRole "+release+"-mcp-sync", err)
	_, err = c.StorageV1().CSIDrivers().Get(ctx, csiDriver, metav1.GetOptions{})
	absent(t, "CSIDriver "+csiDriver, err)
	_, err = c.RbacV1().ClusterRoleBindings().Get(ctx, release+"-mcp-sync", metav1.GetOptions{})
	absent(t, "ClusterRoleBinding "+release+"-mcp-sync", err)

	// Kept: the CRDs (Helm never deletes them) and the CA's claim.
	if _, err := c.CoreV1().PersistentVolumeClaims(releaseNS).Get(ctx, release+"-kms-adapter-state", metav1.GetOptions{}); err != nil {
		t.Errorf("the CA's claim: %v", err)
	}
	crds := crdNames(ctx, t)
	for _, want := range []string{"keysecrets.security.portcullis.dev", "tlspolicies.security.portcullis.dev", "scopeconfigs.security.portcullis.dev"} {
		if !slices.Contains(crds, want) {
			t.Errorf("CRD %s removed by uninstall; CRDs %v", want, crds)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

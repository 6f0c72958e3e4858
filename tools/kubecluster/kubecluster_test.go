package kubecluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	"github.com/portcullis-mesh/portcullis/tools/kubecluster"
)

// probeImage is the test image: ./internal/probe (see its doc comment).
const probeImage = "localhost/portcullis/kubecluster-probe:test"

// socketDir is the hostPath directory of the socket test: under /run, so in the node's own /run.
const socketDir = "/run/kubecluster-test"

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) == "1" {
		runCrashChild()
	}
	kubecluster.Main(m, kubecluster.Options{})
}

var probeOnce struct {
	sync.Once
	err error
}

// cluster is the shared cluster with the probe image imported.
func cluster(t *testing.T) *kubecluster.Cluster {
	t.Helper()
	c := kubecluster.Shared(t)
	probeOnce.Do(func() { probeOnce.err = importProbe(context.Background(), c, t.TempDir()) })
	if probeOnce.err != nil {
		t.Fatal(probeOnce.err)
	}
	return c
}

func importProbe(ctx context.Context, c *kubecluster.Cluster, dir string) error {
	archive, err := kubecluster.BuildImage(ctx, dir, "./tools/kubecluster/internal/probe", probeImage)
	if err != nil {
		return err
	}
	return c.ImportImage(ctx, archive)
}

// TestStopRestoresHost runs first, before the shared cluster exists: a cluster of its own, with a
// pod on the pod network, then Stop; the host is as it was. It also times a start with the
// binaries already built.
func TestStopRestoresHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), kubecluster.StartTimeout+kubecluster.SharedLockWait)
	defer cancel()
	var before kubecluster.HostSnapshot
	var start time.Time
	var after kubecluster.HostSnapshot
	var snapErr, afterErr error
	c, err := kubecluster.Start(ctx, kubecluster.Options{
		LockWait: kubecluster.SharedLockWait, // another package's tests may hold the machine's cluster
		Locked: func() {
			before, snapErr = kubecluster.SnapshotHost(socketDir)
			start = time.Now()
		},
		Unlocking: func() { after, afterErr = kubecluster.SnapshotHost(socketDir) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nothing to node Ready (binaries built): %s", time.Since(start).Round(time.Millisecond))
	if snapErr != nil {
		c.Stop()
		t.Fatal(snapErr)
	}
	stopped := false
	defer func() {
		if !stopped {
			c.Stop()
		}
	}()
	if _, err := kubecluster.Start(ctx, kubecluster.Options{}); err == nil || !strings.Contains(err.Error(), "another kubecluster is running") {
		t.Fatalf("a second cluster on the machine: got %v, want the lock's refusal", err)
	}
	if err := importProbe(ctx, c, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	pod := podSpec("server", probeImage, "http-serve", ":8080")
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running, err := c.WaitForPod(ctx, "default", pod.Name, corev1.PodRunning)
	if err != nil {
		t.Fatal(err)
	}
	// A connection to the pod left open across Stop: the pod's socket outlives the pod as an
	// orphan that keeps its network namespace (and so its veth) for minutes.
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(running.Status.PodIP, "8080"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	total, each := rss(c.PIDs())
	t.Logf("cluster RSS with one pod: %.0f MiB (%s)", total, each)
	during, err := kubecluster.SnapshotHost(socketDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(before.Diff(during)) == 0 {
		t.Fatal("the running cluster changed nothing the snapshot sees: the snapshot is blind")
	}
	stopped = true
	stopStart := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("Stop took %s", time.Since(stopStart).Round(time.Millisecond))
	if afterErr != nil {
		t.Fatal(afterErr)
	}
	if diff := before.Diff(after); len(diff) > 0 {
		t.Fatalf("the host differs after Stop:\n%s", strings.Join(diff, "\n"))
	}
}

func TestNodeReady(t *testing.T) {
	c := cluster(t)
	node, err := c.Client().CoreV1().Nodes().Get(context.Background(), c.NodeName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ready bool
	for _, cond := range node.Status.Conditions {
		ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
	}
	if !ready {
		t.Fatalf("node %s is not Ready: %+v", node.Name, node.Status.Conditions)
	}
	var internalIP string
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			internalIP = a.Address
		}
	}
	if internalIP != c.NodeIP().String() {
		t.Fatalf("node InternalIP %q, want the bridge's %s", internalIP, c.NodeIP())
	}
}

func TestPodRuns(t *testing.T) {
	c := cluster(t)
	ctx := context.Background()
	pod := podSpec("probe-http", probeImage, "http-serve", ":8080")
	// What the Portcullis chart sets on its pods: restricted security context, a PVC.
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem: ptr.To(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	claim, err := c.Client().CoreV1().PersistentVolumeClaims("default").Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "probe-data"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Client().CoreV1().PersistentVolumeClaims("default").Delete(context.Background(), claim.Name, metav1.DeleteOptions{})
	})
	pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim.Name}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, c, pod.Name) })
	running, err := c.WaitForPod(ctx, "default", pod.Name, corev1.PodRunning)
	if err != nil {
		t.Fatal(err)
	}
	// From the host, straight to the pod's address on the bridge.
	body := httpGet(t, "http://"+net.JoinHostPort(running.Status.PodIP, "8080"))
	if body != "hello from "+pod.Name {
		t.Fatalf("pod answered %q", body)
	}
	if _, err := c.PodLogs(ctx, "default", pod.Name); err != nil { // the API server reaches the kubelet
		t.Fatalf("pod logs through the API server: %v", err)
	}
}

func TestProjectedTokenVerifiesAgainstJWKS(t *testing.T) {
	c := cluster(t)
	ctx := context.Background()
	const audience = "portcullis-kubecluster-test"
	pod := podSpec("token", probeImage, "cat", "/var/run/secrets/tokens/token")
	pod.Spec.Volumes = []corev1.Volume{{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: audience, ExpirationSeconds: ptr.To[int64](600), Path: "token"}}}}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "token", MountPath: "/var/run/secrets/tokens"}}
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, c, pod.Name) })
	done, err := c.WaitForPod(ctx, "default", pod.Name, corev1.PodSucceeded)
	if err != nil {
		t.Fatal(err)
	}
	token, err := c.PodLogs(ctx, "default", pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.Client().CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var keys jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	v, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{Issuer: kubecluster.Issuer, Audiences: []string{audience}, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	w, err := v.Verify(strings.TrimSpace(token))
	if err != nil {
		t.Fatalf("the kubelet-projected token does not verify against the API server's JWKS: %v", err)
	}
	if w.Namespace != "default" || w.ServiceAccount != "default" || w.PodName != pod.Name || w.PodUID != string(done.UID) {
		t.Fatalf("token claims %+v, want pod default/%s (%s) of service account default", w, pod.Name, done.UID)
	}
	other, err := workloadtoken.NewVerifier(workloadtoken.VerifierConfig{Issuer: kubecluster.Issuer, Audiences: []string{"another-audience"}, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Verify(strings.TrimSpace(token)); err == nil {
		t.Fatal("the token verified for an audience it was not projected for")
	}
}

func TestPodsShareHostPathSocket(t *testing.T) {
	c := cluster(t)
	ctx := context.Background()
	withSocketDir := func(p *corev1.Pod) *corev1.Pod {
		p.Spec.Volumes = []corev1.Volume{{Name: "sockets", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: socketDir, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "sockets", MountPath: "/sockets"}}
		// The directory is root's; the probe runs as 65532.
		p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](0)}
		return p
	}
	server := withSocketDir(podSpec("socket-server", probeImage, "unix-serve", "/sockets/probe.sock"))
	client := withSocketDir(podSpec("socket-client", probeImage, "unix-dial", "/sockets/probe.sock"))
	for _, p := range []*corev1.Pod{server, client} {
		if _, err := c.Client().CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deletePod(t, c, p.Name) })
	}
	if _, err := c.WaitForPod(ctx, "default", client.Name, corev1.PodSucceeded); err != nil {
		t.Fatal(err)
	}
	if logs, _ := c.PodLogs(ctx, "default", client.Name); logs != "pong\n" {
		t.Fatalf("client pod read %q through the shared socket", logs)
	}
	// The host reaches the same socket through the node's mount namespace.
	conn, err := net.DialTimeout("unix", c.NodePath(socketDir+"/probe.sock"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if b, err := io.ReadAll(conn); err != nil || string(b) != "pong\n" {
		t.Fatalf("host read %q, %v", b, err)
	}
}

func TestPodReachesClusterIPService(t *testing.T) {
	c := cluster(t)
	ctx := context.Background()
	server := podSpec("web", probeImage, "http-serve", ":8080")
	server.Labels = map[string]string{"app": "web"}
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, server, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, c, server.Name) })
	svc, err := c.Client().CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: server.Labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Client().CoreV1().Services("default").Delete(context.Background(), "web", metav1.DeleteOptions{})
	})
	if _, err := c.WaitForPod(ctx, "default", server.Name, corev1.PodRunning); err != nil {
		t.Fatal(err)
	}
	url := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80")
	client := podSpec("web-client", probeImage, "http-get", url)
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, c, client.Name) })
	if _, err := c.WaitForPod(ctx, "default", client.Name, corev1.PodSucceeded); err != nil {
		t.Fatal(err)
	}
	if logs, _ := c.PodLogs(ctx, "default", client.Name); strings.TrimSpace(logs) != "hello from web" {
		t.Fatalf("client pod got %q from %s", logs, url)
	}
	if body := httpGet(t, url); body != "hello from web" {
		t.Fatalf("host got %q from %s", body, url)
	}
	// By name: the pod's resolver searches default.svc.cluster.local, the cluster's DNS answers.
	byName := podSpec("web-client-by-name", probeImage, "http-get", "http://web/")
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, byName, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, c, byName.Name) })
	if _, err := c.WaitForPod(ctx, "default", byName.Name, corev1.PodSucceeded); err != nil {
		t.Fatal(err)
	}
	// The API server through the kubernetes Service's ClusterIP, as in-pod clients reach it:
	// its certificate names that address.
	kubernetesSvc, err := c.Client().CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.Config()
	cfg.Host = "https://" + net.JoinHostPort(kubernetesSvc.Spec.ClusterIP, "443")
	viaService, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := viaService.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		t.Fatalf("the API server through %s: %v", cfg.Host, err)
	}
}

// podSpec is a pod of one container running image with args, never pulled.
func podSpec(name, image string, args ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers:                    []corev1.Container{{Name: "main", Image: image, Args: args, ImagePullPolicy: corev1.PullNever}},
		},
	}
}

func deletePod(t *testing.T, c *kubecluster.Cluster, name string) {
	if err := c.Client().CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Errorf("deleting pod %s: %v", name, err)
	}
}

// httpGet GETs url from the host, retrying for a while: kube-proxy programs a new Service's
// rules asynchronously.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	// No keep-alive: an idle connection to a pod outlives it as a closing socket that holds the
	// pod's network namespace for minutes.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b)
			}
			err = fmt.Errorf("%s: %v", resp.Status, rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(200 * time.Millisecond) // polling kube-proxy, which has no readiness signal per Service
	}
}

// rss sums the resident memory of the processes, in MiB, and lists each.
func rss(pids map[string]int) (float64, string) {
	var total float64
	var each []string
	for name, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				total += kb / 1024
				each = append(each, fmt.Sprintf("%s %.0f", name, kb/1024))
			}
		}
	}
	sort.Strings(each)
	return total, strings.Join(each, ", ")
}

func TestClusterDNS(t *testing.T) {
	c := cluster(t)
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(c.NodeIP().String(), "53"))
	}}
	ctx := context.Background()
	kubernetesSvc, err := c.Client().CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := resolver.LookupHost(ctx, "kubernetes.default.svc.cluster.local")
	if err != nil || len(addrs) != 1 || addrs[0] != kubernetesSvc.Spec.ClusterIP {
		t.Fatalf("kubernetes.default.svc.cluster.local: %v, %v; want %s", addrs, err, kubernetesSvc.Spec.ClusterIP)
	}
	for _, name := range []string{"nosuch.default.svc.cluster.local", "example.com", "kubernetes.default"} {
		var dnsErr *net.DNSError
		if _, err := resolver.LookupHost(ctx, name+"."); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Errorf("%s: got %v, want not found (nothing is forwarded)", name, err)
		}
	}
}

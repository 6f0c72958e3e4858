package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/portcullis-mesh/portcullis/tools/kubecluster"
)

const (
	// csiDriver is the chart's CSI driver name (nodeagent.csi.driverName).
	csiDriver = "csi.portcullis.io"
	// restrictedNS enforces Pod Security restricted: no hostPath, so no node socket directory.
	restrictedNS = "locked"
	idDelta      = "spiffe://cluster.local/ns/" + restrictedNS + "/sa/delta"
	// csiPodsDir holds the pods' sockets on the node (the chart's default nodeagent.csi.kubeletDir).
	csiPodsDir = "/var/lib/kubelet/plugins/" + csiDriver + "/pods"
)

// csiWorkload: a pod in a namespace enforcing Pod Security restricted, where the node's socket
// directory cannot be mounted, gets its SVID over SDS through a socket of its own that the node
// agent publishes as a CSI ephemeral volume, with no token.
func csiWorkload(ctx context.Context, t *testing.T, c kubernetes.Interface) *probe {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: restrictedNS, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	}}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().ServiceAccounts(restrictedNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "delta"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// restricted is enforced: the hostPath way is refused at admission.
	hostPathPod := restrictedPod("hostpath", false)
	hostPathPod.Spec.Volumes = []corev1.Volume{{Name: "sds", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: socketDir}}}}
	_, err := c.CoreV1().Pods(restrictedNS).Create(ctx, hostPathPod, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "restricted") || !strings.Contains(err.Error(), "hostPath") {
		t.Fatalf("a hostPath pod in %s: %v, want refused by Pod Security restricted", restrictedNS, err)
	}

	start := time.Now()
	p := startProbe(ctx, t, c, probeSpec{name: "delta", serviceAccount: "delta", namespace: restrictedNS, csi: true, noToken: true})
	st := p.waitSVID(ctx, t, time.Minute, "SVID through its own socket, with no token", hasID(idDelta))
	t.Logf("restricted pod created → SVID through its CSI socket, no token: %v (serial %s)", time.Since(start).Round(time.Millisecond), st.Serial)

	// On the node: the socket is in the agent's directory for this pod, nowhere a pod can mount.
	sock := suite.cluster.NodePath(filepath.Join(csiPodsDir, p.uid, "sock", "socket"))
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the pod's socket on the node %s: %v", sock, err)
	}
	return p
}

// csiPodDeleted: deleting the pod unpublishes its volume, and its socket and directory go.
func csiPodDeleted(ctx context.Context, t *testing.T, c kubernetes.Interface, p *probe) {
	dir := suite.cluster.NodePath(filepath.Join(csiPodsDir, p.uid))
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("before the delete: %v", err)
	}
	start := time.Now()
	if err := c.CoreV1().Pods(p.ns).Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the pod's socket directory removed", func() error {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %v", dir, err)
		}
		return nil
	})
	t.Logf("pod deleted → its socket directory gone on the node: %v", time.Since(start).Round(time.Millisecond))
}

// csiStartupCost measures what the CSI volume adds to a pod's start: the same restricted pod
// with and without it, created one at a time in turns, from create to Running as a watch sees
// it; and NodePublishVolume itself, as the agent logs it. The kubelet reports a pod Running at
// its next PLEG relist (every second), so the first figure mostly shows whether the volume
// makes a pod miss a relist.
func csiStartupCost(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	const rounds = 8
	var plain, withCSI []time.Duration
	for i := range rounds {
		for _, csi := range []bool{false, true} {
			name := fmt.Sprintf("start-%d-%v", i, csi)
			d := timePodStart(ctx, t, c, restrictedPod(name, csi))
			if csi {
				withCSI = append(withCSI, d)
			} else {
				plain = append(plain, d)
			}
		}
	}
	t.Logf("pod create → Running, %d pods each: without CSI volume %s; with %s", rounds, summary(plain), summary(withCSI))
	if publishes := publishDurations(ctx, t, c); len(publishes) > 0 {
		t.Logf("NodePublishVolume in the agent, %d publishes: %s", len(publishes), summary(publishes))
	}
	for i := range rounds {
		for _, csi := range []bool{false, true} {
			if err := c.CoreV1().Pods(restrictedNS).Delete(ctx, fmt.Sprintf("start-%d-%v", i, csi), metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// restrictedPod is a pause pod that passes Pod Security restricted, with the CSI volume if csi.
func restrictedPod(name string, csi bool) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: restrictedNS},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: ptr.To(false),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr.To(int64(65532)), RunAsNonRoot: ptr.To(true),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "pause", Image: kubecluster.PauseImage, ImagePullPolicy: corev1.PullNever,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	if csi {
		pod.Spec.Volumes = []corev1.Volume{{Name: "sds", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: csiDriver, ReadOnly: ptr.To(true)}}}}
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "sds", MountPath: "/var/run/secrets/workload-spiffe-uds", ReadOnly: true}}
	}
	return pod
}

// timePodStart creates pod and returns how long until a watch sees it Running.
func timePodStart(ctx context.Context, t *testing.T, c kubernetes.Interface, pod *corev1.Pod) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w, err := c.CoreV1().Pods(pod.Namespace).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + pod.Name})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	start := time.Now()
	if _, err := c.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			t.Fatalf("watching %s: %v", pod.Name, ev.Object)
		}
		if p, ok := ev.Object.(*corev1.Pod); ok && p.Status.Phase == corev1.PodRunning {
			return time.Since(start)
		}
	}
	t.Fatalf("pod %s not Running within 2m", pod.Name)
	return 0
}

var publishedLog = regexp.MustCompile(`"msg":"pod socket published".*"duration":(\d+)`)

// publishDurations reads the NodePublishVolume durations from the node agent's log.
func publishDurations(ctx context.Context, t *testing.T, c kubernetes.Interface) []time.Duration {
	t.Helper()
	pods, err := c.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nodeagent"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("the node agent pod: %d pods, %v", len(pods.Items), err)
	}
	logs, err := suite.cluster.PodLogs(ctx, releaseNS, pods.Items[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	var out []time.Duration
	for _, m := range publishedLog.FindAllStringSubmatch(logs, -1) {
		ns, _ := strconv.ParseInt(m[1], 10, 64)
		out = append(out, time.Duration(ns))
	}
	return out
}

func summary(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("median %v (min %v, max %v)", s[len(s)/2].Round(time.Microsecond), s[0].Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond))
}

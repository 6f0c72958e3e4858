package cluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/portcullis-mesh/portcullis/tools/chartcheck"
)

// releaseNS is where the chart is installed; appsNS holds the test workloads.
const (
	release   = "portcullis"
	releaseNS = "portcullis"
	appsNS    = "apps"
)

func client(t *testing.T) kubernetes.Interface {
	t.Helper()
	return cluster(t).Client()
}

// helm runs the helm binary against the cluster, with its homes in the test's scratch directory.
func helm(ctx context.Context, args ...string) (string, error) {
	h := chartcheck.Helm{Bin: suite.helm, Home: filepath.Join(suite.dir, "helm"),
		Env: []string{"KUBECONFIG=" + suite.cluster.Kubeconfig()}}
	out, err := h.Run(ctx, args...)
	return string(out), err
}

// eventually polls cond every 250 ms until it returns nil or the timeout passes, then fails
// with its last error.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// workloadsReady reports whether every Deployment and DaemonSet of the release has its desired
// pods updated and ready.
func workloadsReady(ctx context.Context, c kubernetes.Interface) error {
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	deps, err := c.AppsV1().Deployments(releaseNS).List(ctx, sel)
	if err != nil {
		return err
	}
	if len(deps.Items) != 3 {
		return fmt.Errorf("%d deployments, want 3 (kms-adapter, mcp-sync, citadel)", len(deps.Items))
	}
	for _, d := range deps.Items {
		if err := deploymentReady(&d); err != nil {
			return err
		}
	}
	dss, err := c.AppsV1().DaemonSets(releaseNS).List(ctx, sel)
	if err != nil {
		return err
	}
	if len(dss.Items) != 1 {
		return fmt.Errorf("%d daemonsets, want 1 (nodeagent)", len(dss.Items))
	}
	ds := dss.Items[0]
	if ds.Status.ObservedGeneration < ds.Generation || ds.Status.DesiredNumberScheduled == 0 ||
		ds.Status.UpdatedNumberScheduled != ds.Status.DesiredNumberScheduled || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled {
		return fmt.Errorf("daemonset %s: %d desired, %d updated, %d ready", ds.Name,
			ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled, ds.Status.NumberReady)
	}
	return nil
}

func deploymentReady(d *appsv1.Deployment) error {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != want || s.ReadyReplicas != want || s.Replicas != want {
		return fmt.Errorf("deployment %s: %d wanted, %d updated, %d ready, %d in all", d.Name, want, s.UpdatedReplicas, s.ReadyReplicas, s.Replicas)
	}
	return nil
}

// podUIDs maps the release's pod names to their UIDs.
func podUIDs(ctx context.Context, t *testing.T, c kubernetes.Interface) map[string]string {
	t.Helper()
	pods, err := c.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out[p.Name] = string(p.UID)
		}
	}
	return out
}

// runningPod waits for a pod to run and returns it.
func runningPod(ctx context.Context, t *testing.T, c kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, 2*time.Minute, "pod "+ns+"/"+name+" running", func() error {
		p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return fmt.Errorf("phase %s, conditions %v", p.Status.Phase, p.Status.Conditions)
		}
		pod = p
		return nil
	})
	return pod
}

// jobOutput runs a Job to completion and returns its pod's log.
func jobOutput(ctx context.Context, t *testing.T, c kubernetes.Interface, job *batchv1.Job) string {
	t.Helper()
	created, err := c.BatchV1().Jobs(job.Namespace).Create(ctx, job, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		policy := metav1.DeletePropagationBackground
		_ = c.BatchV1().Jobs(job.Namespace).Delete(context.Background(), created.Name, metav1.DeleteOptions{PropagationPolicy: &policy})
	}()
	var logs string
	eventually(t, 2*time.Minute, "job "+created.Name, func() error {
		j, err := c.BatchV1().Jobs(job.Namespace).Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if j.Status.Succeeded == 0 && j.Status.Failed == 0 {
			return fmt.Errorf("still running")
		}
		pods, err := c.CoreV1().Pods(job.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + created.Name})
		if err != nil || len(pods.Items) == 0 {
			return fmt.Errorf("no pod: %v", err)
		}
		b, err := c.CoreV1().Pods(job.Namespace).GetLogs(pods.Items[0].Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return err
		}
		logs = string(b)
		if j.Status.Failed > 0 {
			t.Fatalf("job %s failed: %s", created.Name, logs)
		}
		return nil
	})
	return logs
}

// absent fails unless get reports NotFound.
func absent(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsNotFound(err) {
		t.Errorf("%s: want it gone after uninstall, got err=%v", what, err)
	}
}

// dumpOnFailure logs, if t has failed, the state of every pod of the release and of the test
// workloads, with their containers' last words: what an operator would look at first.
func dumpOnFailure(t *testing.T, c kubernetes.Interface) {
	t.Helper()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, ns := range []string{releaseNS, appsNS, restrictedNS} {
			pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Logf("listing pods in %s: %v", ns, err)
				continue
			}
			for _, p := range pods.Items {
				t.Logf("pod %s/%s: phase %s on %q", ns, p.Name, p.Status.Phase, p.Spec.NodeName)
				for _, cond := range p.Status.Conditions {
					if cond.Status != corev1.ConditionTrue {
						t.Logf("  condition %s=%s: %s %s", cond.Type, cond.Status, cond.Reason, cond.Message)
					}
				}
				for _, cs := range p.Status.ContainerStatuses {
					t.Logf("  container %s: ready=%v restarts=%d state=%+v last=%+v", cs.Name, cs.Ready, cs.RestartCount, cs.State, cs.LastTerminationState)
					for _, previous := range []bool{false, true} {
						tail := int64(15)
						b, err := c.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: cs.Name, TailLines: &tail, Previous: previous}).DoRaw(ctx)
						if err == nil && len(b) > 0 {
							t.Logf("  logs (previous=%v):\n%s", previous, b)
						}
					}
				}
			}
			events, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
			if err == nil {
				for _, e := range events.Items {
					if e.Type != corev1.EventTypeNormal {
						t.Logf("event %s %s/%s: %s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
					}
				}
			}
		}
	})
}

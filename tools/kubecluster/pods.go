package kubecluster

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
)

// WaitForPod waits until the pod reaches phase (Running: and every container is ready). It fails
// early if the pod reaches a phase it cannot leave for the one wanted, with the pod's events and
// logs in the error.
func (c *Cluster) WaitForPod(ctx context.Context, namespace, name string, phase corev1.PodPhase) (*corev1.Pod, error) {
	var pod *corev1.Pod
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil // not created yet, or a blip: keep polling until ctx ends
		}
		pod = p
		switch {
		case p.Status.Phase == phase && phase == corev1.PodRunning:
			for _, s := range p.Status.ContainerStatuses {
				if !s.Ready {
					return false, nil
				}
			}
			return true, nil
		case p.Status.Phase == phase:
			return true, nil
		case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
			return false, fmt.Errorf("pod %s/%s is %s, want %s", namespace, name, p.Status.Phase, phase)
		}
		return false, nil
	})
	if err != nil {
		return pod, fmt.Errorf("%w\n%s", err, c.describePod(namespace, name, pod))
	}
	return pod, nil
}

// PodLogs is the log of the pod's only (or first) container.
func (c *Cluster) PodLogs(ctx context.Context, namespace, name string) (string, error) {
	b, err := c.client.CoreV1().Pods(namespace).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	return string(b), err
}

// describePod is the pod's status, events and logs, for failure messages.
func (c *Cluster) describePod(namespace, name string, pod *corev1.Pod) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var b strings.Builder
	if pod != nil {
		fmt.Fprintf(&b, "phase %s on node %q", pod.Status.Phase, pod.Spec.NodeName)
		for _, s := range pod.Status.ContainerStatuses {
			fmt.Fprintf(&b, "; container %s ready=%v restarts=%d state=%+v", s.Name, s.Ready, s.RestartCount, s.State)
		}
		b.WriteString("\n")
	}
	events, err := c.client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String()})
	if err == nil {
		for _, e := range events.Items {
			fmt.Fprintf(&b, "event %s %s: %s\n", e.Type, e.Reason, e.Message)
		}
	}
	if logs, err := c.PodLogs(ctx, namespace, name); err == nil && logs != "" {
		fmt.Fprintf(&b, "logs:\n%s", logs)
	}
	return b.String()
}

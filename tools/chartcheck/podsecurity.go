package chartcheck

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Exceptions are the departures from the security defaults a chart may take, each keyed by
// what it applies to and giving the reason.
type Exceptions struct {
	// Root lets a workload ("Kind/name") run as root.
	Root map[string]string
	// HostPID lets a workload ("Kind/name") share the host's pid namespace (not its network or
	// IPC namespace).
	HostPID map[string]string
	// Privileged lets a container ("Kind/name/container") run privileged. Its privilege-
	// escalation and capability checks are skipped (a privileged container has every
	// capability whatever it drops, and Kubernetes refuses allowPrivilegeEscalation: false with
	// privileged: true); every other check still applies.
	Privileged map[string]string
}

// CheckPodSecurity applies the chart's security defaults to every pod template in a stream of
// rendered manifests and returns what breaks them: every container with a read-only root
// filesystem, no privilege escalation, every capability dropped and none added, not privileged,
// CPU and memory requests; every pod with the RuntimeDefault (or a Localhost) seccomp profile,
// none of the host's namespaces, and runAsNonRoot; but for what ex allows.
func CheckPodSecurity(manifests []byte, ex Exceptions) ([]string, error) {
	var problems []string
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	for {
		raw, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return problems, nil
		}
		if err != nil {
			return nil, err
		}
		id, spec, err := podSpecOf(raw)
		if err != nil {
			return nil, err
		}
		if spec == nil {
			continue
		}
		allowed := allowed{root: ex.Root[id] != "", hostPID: ex.HostPID[id] != "",
			privileged: func(container string) bool { return ex.Privileged[id+"/"+container] != "" }}
		for _, p := range checkPod(spec, allowed) {
			problems = append(problems, id+": "+p)
		}
	}
}

// podSpecOf decodes the pod template of a workload kind; other kinds give a nil spec.
func podSpecOf(raw []byte) (string, *corev1.PodSpec, error) {
	var head struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(raw, &head); err != nil {
		return "", nil, err
	}
	id := head.Kind + "/" + head.Metadata.Name
	var spec *corev1.PodSpec
	var err error
	switch head.Kind {
	case "Deployment":
		var o appsv1.Deployment
		err = yaml.Unmarshal(raw, &o)
		spec = &o.Spec.Template.Spec
	case "DaemonSet":
		var o appsv1.DaemonSet
		err = yaml.Unmarshal(raw, &o)
		spec = &o.Spec.Template.Spec
	case "StatefulSet":
		var o appsv1.StatefulSet
		err = yaml.Unmarshal(raw, &o)
		spec = &o.Spec.Template.Spec
	case "Job":
		var o batchv1.Job
		err = yaml.Unmarshal(raw, &o)
		spec = &o.Spec.Template.Spec
	case "CronJob":
		var o batchv1.CronJob
		err = yaml.Unmarshal(raw, &o)
		spec = &o.Spec.JobTemplate.Spec.Template.Spec
	case "Pod":
		var o corev1.Pod
		err = yaml.Unmarshal(raw, &o)
		spec = &o.Spec
	}
	if err != nil {
		return "", nil, fmt.Errorf("decoding %s: %w", id, err)
	}
	return id, spec, nil
}

// allowed is what Exceptions allow one workload.
type allowed struct {
	root, hostPID bool
	privileged    func(container string) bool
}

func checkPod(spec *corev1.PodSpec, ok allowed) []string {
	var problems []string
	if spec.HostNetwork || spec.HostIPC || spec.HostPID && !ok.hostPID {
		problems = append(problems, "uses a host namespace (hostNetwork, hostPID or hostIPC)")
	}
	podSC := spec.SecurityContext
	if podSC == nil {
		podSC = &corev1.PodSecurityContext{}
	}
	containers := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for _, c := range containers {
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		where := "container " + c.Name + ": "
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			problems = append(problems, where+"readOnlyRootFilesystem is not true")
		}
		if !ok.privileged(c.Name) {
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				problems = append(problems, where+"allowPrivilegeEscalation is not false")
			}
			if sc.Privileged != nil && *sc.Privileged {
				problems = append(problems, where+"is privileged")
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				problems = append(problems, where+"does not drop ALL capabilities")
			} else if len(sc.Capabilities.Add) > 0 {
				problems = append(problems, fmt.Sprintf("%sadds capabilities %v", where, sc.Capabilities.Add))
			}
		}
		if !seccompConfined(sc.SeccompProfile, podSC.SeccompProfile) {
			problems = append(problems, where+"has no RuntimeDefault or Localhost seccomp profile")
		}
		nonRoot := sc.RunAsNonRoot
		if nonRoot == nil {
			nonRoot = podSC.RunAsNonRoot
		}
		if !ok.root && (nonRoot == nil || !*nonRoot) {
			problems = append(problems, where+"runAsNonRoot is not true")
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[r]; !ok {
				problems = append(problems, fmt.Sprintf("%shas no %s request", where, r))
			}
		}
	}
	return problems
}

// seccompConfined reports whether the container's profile, or else the pod's, confines it.
func seccompConfined(container, pod *corev1.SeccompProfile) bool {
	p := container
	if p == nil {
		p = pod
	}
	return p != nil && (p.Type == corev1.SeccompProfileTypeRuntimeDefault || p.Type == corev1.SeccompProfileTypeLocalhost)
}

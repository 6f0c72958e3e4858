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

// RootException lets one workload ("Kind/name") run as root, for the reason given.
type RootException map[string]string

// PrivilegedException lets one container ("Kind/name/container") run privileged, for the reason
// given. Its privilege-escalation and capability checks are skipped (a privileged container has
// every capability whatever it drops, and Kubernetes refuses allowPrivilegeEscalation: false
// with privileged: true); every other check still applies.
type PrivilegedException map[string]string

// CheckPodSecurity applies the chart's security defaults to every pod template in a stream of
// rendered manifests and returns what breaks them: every container with a read-only root
// filesystem, no privilege escalation, every capability dropped and none added, not privileged,
// CPU and memory requests; every pod with the RuntimeDefault (or a Localhost) seccomp profile,
// none of the host's namespaces, and runAsNonRoot unless rootOK names it; a container that
// privilegedOK names may be privileged.
func CheckPodSecurity(manifests []byte, rootOK RootException, privilegedOK ...PrivilegedException) ([]string, error) {
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
		privileged := func(container string) bool {
			for _, e := range privilegedOK {
				if e[id+"/"+container] != "" {
					return true
				}
			}
			return false
		}
		for _, p := range checkPod(spec, rootOK[id] != "", privileged) {
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

func checkPod(spec *corev1.PodSpec, rootOK bool, privilegedOK func(container string) bool) []string {
	var problems []string
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
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
		if !privilegedOK(c.Name) {
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
		if !rootOK && (nonRoot == nil || !*nonRoot) {
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

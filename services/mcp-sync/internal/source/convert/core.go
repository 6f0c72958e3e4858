// Package convert turns Kubernetes objects into the mcpv1 messages mcp-sync serves, rejecting
// what the API server would reject and what would break resource names. Every source uses it,
// so a pod reads the same from a manifest as from the API server.
package convert

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// defaultName is what Kubernetes fills in for an empty namespace and an empty service account.
const defaultName = "default"

// Key is the xDS resource name of a namespaced object.
func Key(namespace, name string) string { return namespace + "/" + name }

// Pod converts a pod.
func Pod(pod *corev1.Pod) (*mcpv1.Pod, error) {
	ns := pod.Namespace
	if ns == "" {
		ns = defaultName
	}
	if err := checkName("Pod", pod.Name, validation.IsDNS1123Subdomain); err != nil {
		return nil, err
	}
	if err := checkName("Pod "+pod.Name+" namespace", ns, validation.IsDNS1123Label); err != nil {
		return nil, err
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = pod.Spec.DeprecatedServiceAccount // still honoured by the API server
	}
	if sa == "" {
		sa = defaultName
	}
	return &mcpv1.Pod{
		Name:           Key(ns, pod.Name),
		Namespace:      ns,
		PodName:        pod.Name,
		Uid:            string(pod.UID),
		NodeName:       pod.Spec.NodeName,
		ServiceAccount: sa,
		Labels:         pod.Labels,
		PodIp:          pod.Status.PodIP,
	}, nil
}

// ServiceAccount converts a service account.
func ServiceAccount(sa *corev1.ServiceAccount) (*mcpv1.ServiceAccount, error) {
	ns := sa.Namespace
	if ns == "" {
		ns = defaultName
	}
	if err := checkName("ServiceAccount", sa.Name, validation.IsDNS1123Subdomain); err != nil {
		return nil, err
	}
	if err := checkName("ServiceAccount "+sa.Name+" namespace", ns, validation.IsDNS1123Label); err != nil {
		return nil, err
	}
	return &mcpv1.ServiceAccount{
		Name:           Key(ns, sa.Name),
		Namespace:      ns,
		ServiceAccount: sa.Name,
		Uid:            string(sa.UID),
	}, nil
}

// Namespace converts a namespace.
func Namespace(ns *corev1.Namespace) (*mcpv1.Namespace, error) {
	if err := checkName("Namespace", ns.Name, validation.IsDNS1123Label); err != nil {
		return nil, err
	}
	return &mcpv1.Namespace{Name: ns.Name, Uid: string(ns.UID), Labels: ns.Labels}, nil
}

// checkName rejects what the API server would reject; a name with a "/" would also break the
// "<namespace>/<name>" resource names.
func checkName(what, name string, valid func(string) []string) error {
	if name == "" {
		return fmt.Errorf("%s has no metadata.name", what)
	}
	if errs := valid(name); len(errs) > 0 {
		return fmt.Errorf("%s name %q is invalid: %s", what, name, strings.Join(errs, "; "))
	}
	return nil
}

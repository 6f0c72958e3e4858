package kube

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/metrics"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/convert"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// kind is one watched resource and how to convert its objects.
type kind struct {
	kind     inventory.Kind
	resource schema.GroupVersionResource
	convert  func(*unstructured.Unstructured) (inventory.Object, error)
}

var kinds = []kind{
	{inventory.Pod, corev1.SchemeGroupVersion.WithResource("pods"), typed(convert.Pod)},
	{inventory.ServiceAccount, corev1.SchemeGroupVersion.WithResource("serviceaccounts"), typed(convert.ServiceAccount)},
	{inventory.Namespace, corev1.SchemeGroupVersion.WithResource("namespaces"), typed(convert.Namespace)},
	{inventory.KeySecret, convert.KeySecretResource, custom(convert.KeySecret)},
	{inventory.TLSPolicy, convert.TLSPolicyResource, custom(convert.TLSPolicy)},
	{inventory.ScopeConfig, convert.ScopeConfigResource, custom(convert.ScopeConfig)},
}

// typed converts through the core type, so that core objects read exactly as the file source
// reads them.
func typed[T any, PT interface{ *T }, O inventory.Object](conv func(PT) (O, error)) func(*unstructured.Unstructured) (inventory.Object, error) {
	return func(u *unstructured.Unstructured) (inventory.Object, error) {
		var obj T
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &obj); err != nil {
			return nil, err
		}
		return conv(&obj)
	}
}

func custom[O inventory.Object](conv func(*unstructured.Unstructured) (O, error)) func(*unstructured.Unstructured) (inventory.Object, error) {
	return func(u *unstructured.Unstructured) (inventory.Object, error) { return conv(u) }
}

// handler turns informer events into changes. A malformed object is reported and skipped: its
// last good version (if any) stays served, as with a broken manifest file.
func (s *Source) handler(k kind) cache.ResourceEventHandler {
	set := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return
		}
		o, err := k.convert(u)
		if err != nil {
			s.malformed(k, u, err)
			return
		}
		s.wellFormed(k, u)
		s.enqueue(inventory.Change{Kind: k.kind, Name: o.GetName(), Object: o})
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { set(obj) },
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				return
			}
			s.wellFormed(k, u)
			s.enqueue(inventory.Change{Kind: k.kind, Name: objectName(k, u)})
		},
	}
}

// objectName is the xDS resource name: "<namespace>/<name>", or the name of a namespace.
func objectName(k kind, u *unstructured.Unstructured) string {
	if k.kind == inventory.Namespace {
		return u.GetName()
	}
	ns := u.GetNamespace()
	if ns == "" {
		ns = "default"
	}
	return convert.Key(ns, u.GetName())
}

func (s *Source) malformed(k kind, u *unstructured.Unstructured, err error) {
	s.cfg.Logger.Error("skipping malformed object, keeping its last good version if any",
		"kind", k.kind.String(), "namespace", u.GetNamespace(), "name", u.GetName(), "err", err)
	if s.cfg.Errors != nil {
		s.cfg.Errors.Inc()
	}
	if s.cfg.Malformed != nil {
		s.cfg.Malformed.WithLabelValues(metrics.KindLabelValue(int(k.kind)), u.GetNamespace(), u.GetName()).Set(1)
	}
}

func (s *Source) wellFormed(k kind, u *unstructured.Unstructured) {
	if s.cfg.Malformed != nil {
		s.cfg.Malformed.DeleteLabelValues(metrics.KindLabelValue(int(k.kind)), u.GetNamespace(), u.GetName())
	}
}

// stripUnused drops what mcp-sync never reads before the informer stores an object: most of a
// pod is spec and status that identity does not need, and managedFields and annotations are
// often the largest part of any object. At 100,000 pods this is most of the informer's memory.
func stripUnused(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	u.SetManagedFields(nil)
	u.SetAnnotations(nil)
	u.SetOwnerReferences(nil)
	if u.GetKind() == "Pod" {
		spec, _, _ := unstructured.NestedMap(u.Object, "spec")
		podIP, _, _ := unstructured.NestedString(u.Object, "status", "podIP")
		keep := map[string]any{}
		for _, f := range []string{"nodeName", "serviceAccountName", "serviceAccount"} {
			if v, ok := spec[f]; ok {
				keep[f] = v
			}
		}
		u.Object["spec"] = keep
		u.Object["status"] = map[string]any{"podIP": podIP}
	}
	return u, nil
}

// preflight lists each kind once before the informers start, so that a missing permission or CRD
// is a clear error at start-up instead of a retry loop in the log. An API server that cannot be
// reached yet is waited for.
func (s *Source) preflight(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for _, k := range kinds {
		for {
			_, err := s.cfg.Dynamic.Resource(k.resource).List(ctx, metav1.ListOptions{Limit: 1})
			if err == nil {
				break
			}
			if msg, ok := rbacMessage(k.resource, err); ok {
				return fmt.Errorf("%s: %w", msg, err)
			}
			if apierrors.IsNotFound(err) && k.resource.Group != "" {
				return fmt.Errorf("the API server does not serve %s: install the CRDs from charts/portcullis/crds: %w", describe(k.resource), err)
			}
			s.cfg.Logger.Warn("kubernetes API not reachable yet, retrying", "resource", describe(k.resource), "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
		}
	}
	return nil
}

// rbacMessage explains a Forbidden error in terms of the verbs and the resource mcp-sync needs.
func rbacMessage(r schema.GroupVersionResource, err error) (string, bool) {
	if !apierrors.IsForbidden(err) {
		return "", false
	}
	return fmt.Sprintf("rbac: mcp-sync is forbidden to list and watch %s cluster-wide; it needs verbs get, list, watch on %s (the chart's ClusterRole portcullis-mcp-sync grants them)",
		describe(r), describe(r)), true
}

// describe names a resource the way RBAC rules do: "pods" or "keysecrets.security.portcullis.dev".
func describe(r schema.GroupVersionResource) string {
	return strings.TrimSuffix(r.Resource+"."+r.Group, ".")
}

package chartcheck

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/yannh/kubeconform/pkg/validator"

	"github.com/portcullis-mesh/portcullis/tools/k8sschema"
)

// Validator checks manifests with kubeconform in strict mode against schema directories
// written by tools/k8sschema. A kind no directory has a schema for is an error, not a skip.
type Validator struct {
	v validator.Validator
}

// NewValidator validates against the schemas in dirs, the first directory that has a kind's
// schema winning.
func NewValidator(dirs ...string) (*Validator, error) {
	var locations []string
	for _, d := range dirs {
		locations = append(locations, k8sschema.LocationTemplate(d))
	}
	v, err := validator.New(locations, validator.Opts{
		Strict:            true,
		KubernetesVersion: strings.TrimPrefix(KubeVersion, "v"),
	})
	if err != nil {
		return nil, fmt.Errorf("kubeconform: %w", err)
	}
	return &Validator{v: v}, nil
}

// Resource is one validated manifest.
type Resource struct {
	Kind, Name string
}

// Validate checks every document of a YAML stream (as `helm template` prints it) and returns
// the resources that passed, and an error listing every one that did not, with the source
// template helm names in its "# Source:" comment.
func (v *Validator) Validate(ctx context.Context, name string, manifests io.Reader) ([]Resource, error) {
	var ok []Resource
	var problems []string
	for _, r := range v.v.ValidateWithContext(ctx, name, io.NopCloser(manifests)) {
		sig, _ := r.Resource.Signature()
		id := "document"
		if sig != nil {
			id = fmt.Sprintf("%s %s/%s", sig.Kind, sig.Namespace, sig.Name)
		}
		if src := sourceOf(r.Resource.Bytes); src != "" {
			id += " (" + src + ")"
		}
		switch r.Status {
		case validator.Valid:
			ok = append(ok, Resource{Kind: sig.Kind, Name: sig.Name})
		case validator.Empty:
		case validator.Invalid:
			for _, e := range r.ValidationErrors {
				problems = append(problems, fmt.Sprintf("%s: %s: %s", id, e.Path, e.Msg))
			}
			if len(r.ValidationErrors) == 0 {
				problems = append(problems, fmt.Sprintf("%s: %v", id, r.Err))
			}
		default:
			problems = append(problems, fmt.Sprintf("%s: %v", id, r.Err))
		}
	}
	if len(problems) > 0 {
		return ok, fmt.Errorf("%d problem(s):\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	return ok, nil
}

// sourceOf reads the "# Source: chart/templates/x.yaml" line helm puts above each manifest.
func sourceOf(doc []byte) string {
	for _, line := range strings.Split(string(doc), "\n") {
		if s, found := strings.CutPrefix(strings.TrimSpace(line), "# Source: "); found {
			return s
		}
	}
	return ""
}

// ExternalCRD is a CustomResourceDefinition of another project that the chart can render
// resources of, read from a file of that project's Go module zip.
type ExternalCRD struct {
	Module, Version, Path string
}

// ExternalCRDs are the CRDs the chart renders resources of but does not ship: the Prometheus
// Operator's ServiceMonitor (global.metrics.serviceMonitor.enabled). monitoring.coreos.com/v1 is
// stable; v0.85.0 is the release the module proxy serves.
var ExternalCRDs = []ExternalCRD{{
	Module:  "github.com/prometheus-operator/prometheus-operator",
	Version: "v0.85.0",
	Path:    "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
}}

// ChartValidator validates against the Kubernetes schemas of KubeVersion (generated once under
// cacheDir), and those of the CRDs in chart/crds and of ExternalCRDs (generated into scratch,
// which the caller owns: the chart's CRDs change with the chart, so they are not cached).
func ChartValidator(ctx context.Context, cacheDir, chart, scratch string) (*Validator, error) {
	kube, err := k8sschema.Cached(ctx, cacheDir, KubeVersion)
	if err != nil {
		return nil, err
	}
	swagger, err := k8sschema.SwaggerFromModule(ctx, KubeVersion)
	if err != nil {
		return nil, err
	}
	defs, err := k8sschema.ParseSwagger(swagger)
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(chart, "crds", "*.yaml"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if _, err := defs.WriteCRDs(b, scratch); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
	}
	for _, c := range ExternalCRDs {
		b, err := k8sschema.ModuleFile(ctx, c.Module, c.Version, c.Path)
		if err != nil {
			return nil, err
		}
		if _, err := defs.WriteCRDs(b, scratch); err != nil {
			return nil, fmt.Errorf("%s@%s/%s: %w", c.Module, c.Version, c.Path, err)
		}
	}
	// The CRDs' directory first: a chart's kind shadows nothing of Kubernetes' own.
	return NewValidator(scratch, kube)
}

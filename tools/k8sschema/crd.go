package k8sschema

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// crd is the part of an apiextensions.k8s.io/v1 CustomResourceDefinition the schemas come from.
type crd struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Group string `json:"group"`
		Names struct {
			Kind string `json:"kind"`
		} `json:"names"`
		Versions []struct {
			Name   string `json:"name"`
			Schema *struct {
				OpenAPIV3Schema Schema `json:"openAPIV3Schema"`
			} `json:"schema"`
		} `json:"versions"`
	} `json:"spec"`
}

// WriteCRDs writes a schema for every version of every CustomResourceDefinition in the YAML
// stream crds (other documents are ignored) into dir, and returns the files it wrote. A custom
// resource's metadata is validated as the ObjectMeta of d; its apiVersion and kind are pinned.
// Objects are closed (additionalProperties false) unless the CRD preserves unknown fields there,
// and only fields marked nullable accept null, as the API server decides for a structural schema.
func (d *Definitions) WriteCRDs(crds []byte, dir string) ([]string, error) {
	meta := d.expandBody(objectMetaDefinition)
	if meta.schema == nil {
		return nil, fmt.Errorf("the OpenAPI document has no %s", objectMetaDefinition)
	}
	var files []string
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(crds)))
	for {
		raw, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading CRD YAML: %w", err)
		}
		var c crd
		if err := yaml.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("decoding a CRD: %w", err)
		}
		if c.Kind != "CustomResourceDefinition" {
			continue
		}
		if c.APIVersion != "apiextensions.k8s.io/v1" {
			return nil, fmt.Errorf("CRD %s: apiVersion %q, want apiextensions.k8s.io/v1", c.Metadata.Name, c.APIVersion)
		}
		for _, v := range c.Spec.Versions {
			if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
				return nil, fmt.Errorf("CRD %s version %s has no openAPIV3Schema", c.Metadata.Name, v.Name)
			}
			gvk := GroupVersionKind{Group: c.Spec.Group, Version: v.Name, Kind: c.Spec.Names.Kind}
			schema := crdSchema(v.Schema.OpenAPIV3Schema, gvk)
			props := schema["properties"].(Schema)
			props["metadata"] = deepCopy(meta.schema)
			d.attachDefinitions(schema, meta.needs)
			path := filepath.Join(dir, gvk.FileName())
			if err := writeJSON(path, schema); err != nil {
				return nil, err
			}
			files = append(files, path)
		}
	}
}

// crdSchema converts one openAPIV3Schema, with apiVersion and kind pinned at the root.
func crdSchema(s Schema, gvk GroupVersionKind) Schema {
	var convert func(Schema) Schema
	convert = func(c Schema) Schema { return transform(c, convert, rules{strict: true}) }
	root := convert(s)
	props, _ := root["properties"].(Schema)
	if props == nil {
		props = Schema{}
		root["properties"] = props
	}
	props["apiVersion"] = Schema{"type": "string", "enum": []any{gvk.APIVersion()}}
	props["kind"] = Schema{"type": "string", "enum": []any{gvk.Kind}}
	if s["x-kubernetes-preserve-unknown-fields"] != true {
		root["additionalProperties"] = false
	}
	return root
}

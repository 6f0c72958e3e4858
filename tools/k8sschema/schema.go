// Package k8sschema turns the Kubernetes OpenAPI v2 document (api/openapi-spec/swagger.json of
// the k8s.io/kubernetes module) and CustomResourceDefinitions into the JSON schemas kubeconform
// reads, offline, in its "standalone-strict" layout: one file per kind and version, named
// `{kind}-{group}-{version}.json` (`{kind}-{version}.json` for the core group, {group} being the
// first label of the API group, as kubeconform's {{ .KindSuffix }} spells it), every $ref
// inlined, and additionalProperties false on every object that lists its properties.
//
// The conversion follows the one kubeconform's published schemas are made with
// (instrumenta/openapi2jsonschema --kubernetes --expanded --stand-alone --strict), with three
// deliberate differences:
//   - recursive definitions (only apiextensions' JSONSchemaProps family in 1.32) cannot be
//     inlined; they stay as local refs into the file's own "definitions", so a
//     CustomResourceDefinition is validated in full rather than skipped;
//   - every optional property accepts null (the API server decodes null as unset), including
//     those of inlined definitions; required properties do not;
//   - descriptions and x-kubernetes-* annotations are dropped: they never change a verdict and
//     make up most of the bytes.
package k8sschema

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Schema is one JSON schema object as decoded by encoding/json.
type Schema = map[string]any

const definitionsPrefix = "#/definitions/"

// FormatVersion names the output format of this package. It is part of the cache key, so a
// change to the conversion regenerates cached schemas; bump it with any such change.
const FormatVersion = "1"

// Substitutes for the two apimachinery scalars that the OpenAPI document types as strings but
// manifests write as numbers too. Quantity accepts any number, as kubectl and the API server do.
var scalarOverrides = map[string]Schema{
	"io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"oneOf": []any{Schema{"type": "string"}, Schema{"type": "integer"}}},
	"io.k8s.apimachinery.pkg.api.resource.Quantity":   {"oneOf": []any{Schema{"type": "string"}, Schema{"type": "number"}}},
}

// objectMetaDefinition is the definition a custom resource's metadata is validated against.
const objectMetaDefinition = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

// Definitions are the "definitions" of an OpenAPI v2 document, ready to be expanded.
type Definitions struct {
	defs      map[string]Schema
	recursive map[string]bool
	expanded  map[string]expansion
}

// expansion is a definition with every non-recursive $ref inlined, and the recursive
// definitions its remaining local refs point at.
type expansion struct {
	schema Schema
	needs  map[string]bool
}

// ParseSwagger reads an OpenAPI v2 document.
func ParseSwagger(swagger []byte) (*Definitions, error) {
	var doc struct {
		Swagger     string            `json:"swagger"`
		Definitions map[string]Schema `json:"definitions"`
	}
	if err := json.Unmarshal(swagger, &doc); err != nil {
		return nil, fmt.Errorf("decoding the OpenAPI document: %w", err)
	}
	if !strings.HasPrefix(doc.Swagger, "2.") || len(doc.Definitions) == 0 {
		return nil, fmt.Errorf("not an OpenAPI v2 document with definitions (swagger %q, %d definitions)", doc.Swagger, len(doc.Definitions))
	}
	d := &Definitions{defs: doc.Definitions, expanded: map[string]expansion{}}
	for name, s := range scalarOverrides {
		d.defs[name] = s
	}
	d.recursive = findRecursive(d.defs)
	return d, nil
}

// GroupVersionKind is one entry of a definition's x-kubernetes-group-version-kind.
type GroupVersionKind struct {
	Group, Version, Kind string
}

// APIVersion is the apiVersion a manifest of this kind carries.
func (g GroupVersionKind) APIVersion() string {
	if g.Group == "" {
		return g.Version
	}
	return g.Group + "/" + g.Version
}

// FileName is the file kubeconform looks for with the location template
// `{{ .ResourceKind }}{{ .KindSuffix }}.json`.
func (g GroupVersionKind) FileName() string {
	name := strings.ToLower(g.Kind)
	if g.Group != "" {
		name += "-" + strings.ToLower(strings.Split(g.Group, ".")[0])
	}
	return name + "-" + strings.ToLower(g.Version) + ".json"
}

// LocationTemplate is the kubeconform -schema-location for a directory written by this package.
func LocationTemplate(dir string) string {
	return filepath.Join(dir, "{{ .ResourceKind }}{{ .KindSuffix }}.json")
}

// WriteKinds writes a schema for every kind and version the document defines into dir and
// returns how many files it wrote.
func (d *Definitions) WriteKinds(dir string) (int, error) {
	written := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(d.defs)) {
		for _, gvk := range groupVersionKinds(d.defs[name]) {
			file := gvk.FileName()
			if prev, dup := written[file]; dup {
				// Kinds like DeleteOptions are listed under many groups by several definitions;
				// the first definition (in sorted order) wins, deterministically.
				if prev != name {
					continue
				}
			}
			schema, err := d.kindSchema(name, gvk)
			if err != nil {
				return 0, err
			}
			if err := writeJSON(filepath.Join(dir, file), schema); err != nil {
				return 0, err
			}
			written[file] = name
		}
	}
	return len(written), nil
}

// kindSchema is the standalone schema of definition name as the kind gvk.
func (d *Definitions) kindSchema(name string, gvk GroupVersionKind) (Schema, error) {
	exp := d.expandBody(name)
	root := deepCopy(exp.schema).(Schema)
	props, _ := root["properties"].(Schema)
	if props == nil {
		return nil, fmt.Errorf("definition %s of kind %s has no properties", name, gvk.Kind)
	}
	pinEnum(props, "apiVersion", gvk.APIVersion())
	pinEnum(props, "kind", gvk.Kind)
	root["additionalProperties"] = false
	d.attachDefinitions(root, exp.needs)
	return root, nil
}

// pinEnum restricts property key of props to one value, keeping its type.
func pinEnum(props Schema, key, value string) {
	p, ok := props[key].(Schema)
	if !ok {
		return
	}
	p = maps.Clone(p)
	p["enum"] = []any{value}
	props[key] = p
}

// attachDefinitions adds the recursive definitions a schema's local refs point at, and those
// they point at in turn, as the schema's own "definitions".
func (d *Definitions) attachDefinitions(root Schema, needs map[string]bool) {
	if len(needs) == 0 {
		return
	}
	defs := Schema{}
	queue := slices.Sorted(maps.Keys(needs))
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if _, done := defs[name]; done {
			continue
		}
		exp := d.expandBody(name)
		defs[name] = exp.schema
		for n := range exp.needs {
			queue = append(queue, n)
		}
	}
	root["definitions"] = defs
}

// expand returns definition name with its refs inlined; a recursive definition becomes a local
// ref into the file's definitions.
func (d *Definitions) expand(name string) expansion {
	if d.recursive[name] {
		return expansion{schema: Schema{"$ref": definitionsPrefix + name}, needs: map[string]bool{name: true}}
	}
	return d.expandBody(name)
}

// expandBody returns the body of definition name with its refs inlined (memoized).
func (d *Definitions) expandBody(name string) expansion {
	if exp, ok := d.expanded[name]; ok {
		return exp
	}
	needs := map[string]bool{}
	s := d.rewrite(d.defs[name], needs)
	exp := expansion{schema: s, needs: needs}
	d.expanded[name] = exp
	return exp
}

// rewrite copies a schema with refs expanded, documentation dropped, and the strictness and
// null rules applied.
func (d *Definitions) rewrite(s Schema, needs map[string]bool) Schema {
	if ref, ok := s["$ref"].(string); ok {
		exp := d.expand(strings.TrimPrefix(ref, definitionsPrefix))
		for n := range exp.needs {
			needs[n] = true
		}
		return exp.schema
	}
	return transform(s, func(child Schema) Schema { return d.rewrite(child, needs) }, rules{strict: true, nullOptional: true})
}

// groupVersionKinds reads a definition's x-kubernetes-group-version-kind.
func groupVersionKinds(def Schema) []GroupVersionKind {
	list, _ := def["x-kubernetes-group-version-kind"].([]any)
	var out []GroupVersionKind
	for _, e := range list {
		m, _ := e.(Schema)
		g, _ := m["group"].(string)
		v, _ := m["version"].(string)
		k, _ := m["kind"].(string)
		if v != "" && k != "" {
			out = append(out, GroupVersionKind{Group: g, Version: v, Kind: k})
		}
	}
	return out
}

// findRecursive reports the definitions that can reach themselves through refs.
func findRecursive(defs map[string]Schema) map[string]bool {
	edges := map[string][]string{}
	for name, s := range defs {
		edges[name] = refsOf(s, nil)
	}
	recursive := map[string]bool{}
	for start := range defs {
		seen := map[string]bool{}
		stack := slices.Clone(edges[start])
		for len(stack) > 0 {
			n := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if n == start {
				recursive[start] = true
				break
			}
			if seen[n] {
				continue
			}
			seen[n] = true
			stack = append(stack, edges[n]...)
		}
	}
	return recursive
}

// refsOf lists the definitions a schema refers to directly.
func refsOf(s Schema, acc []string) []string {
	if ref, ok := s["$ref"].(string); ok {
		return append(acc, strings.TrimPrefix(ref, definitionsPrefix))
	}
	forEachChild(s, func(child Schema) { acc = refsOf(child, acc) })
	return acc
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", filepath.Base(path), err)
	}
	return os.WriteFile(path, b, 0o644)
}

func deepCopy(v any) any {
	switch t := v.(type) {
	case Schema:
		m := make(Schema, len(t))
		for k, e := range t {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		l := make([]any, len(t))
		for i, e := range t {
			l[i] = deepCopy(e)
		}
		return l
	default:
		return v
	}
}

package k8sschema

import (
	"maps"
	"slices"
	"strings"
)

// rules are the changes transform makes on the way.
type rules struct {
	// strict sets additionalProperties false on objects that list properties and do not say
	// otherwise (nor preserve unknown fields).
	strict bool
	// nullOptional lets every property that is not required be null.
	nullOptional bool
}

// Keywords whose values are one schema, and those whose values are a list of schemas.
var (
	schemaKeywords     = []string{"items", "additionalProperties", "not"}
	schemaListKeywords = []string{"allOf", "anyOf", "oneOf"}
)

// forEachChild calls f with every subschema directly under s.
func forEachChild(s Schema, f func(Schema)) {
	if props, ok := s["properties"].(Schema); ok {
		for _, k := range slices.Sorted(maps.Keys(props)) {
			if p, ok := props[k].(Schema); ok {
				f(p)
			}
		}
	}
	for _, k := range schemaKeywords {
		switch v := s[k].(type) {
		case Schema:
			f(v)
		case []any:
			for _, e := range v {
				if c, ok := e.(Schema); ok {
					f(c)
				}
			}
		}
	}
	for _, k := range schemaListKeywords {
		list, _ := s[k].([]any)
		for _, e := range list {
			if c, ok := e.(Schema); ok {
				f(c)
			}
		}
	}
}

// transform copies s: documentation and x-kubernetes-* annotations dropped, the structural
// schema extensions of CustomResourceDefinitions turned into JSON schema, every subschema passed
// through child, then the rules applied.
func transform(s Schema, child func(Schema) Schema, r rules) Schema {
	if s["x-kubernetes-int-or-string"] == true {
		return Schema{"oneOf": []any{Schema{"type": "string"}, Schema{"type": "integer"}}}
	}
	if s["format"] == "int-or-string" {
		return Schema{"oneOf": []any{Schema{"type": "string"}, Schema{"type": "integer"}}}
	}
	out := Schema{}
	for k, v := range s {
		switch {
		case k == "description", strings.HasPrefix(k, "x-kubernetes-"), k == "nullable":
			// dropped; nullable is applied below
		case k == "properties":
			props, _ := v.(Schema)
			np := make(Schema, len(props))
			for name, p := range props {
				if ps, ok := p.(Schema); ok {
					np[name] = child(ps)
				}
			}
			out[k] = np
		case slices.Contains(schemaKeywords, k):
			switch t := v.(type) {
			case Schema:
				out[k] = child(t)
			case []any: // items as a tuple (OpenAPI v2 allows it)
				l := make([]any, 0, len(t))
				for _, e := range t {
					if c, ok := e.(Schema); ok {
						l = append(l, child(c))
					}
				}
				out[k] = l
			default:
				out[k] = v
			}
		case slices.Contains(schemaListKeywords, k):
			list, _ := v.([]any)
			l := make([]any, 0, len(list))
			for _, e := range list {
				if c, ok := e.(Schema); ok {
					l = append(l, child(c))
				}
			}
			out[k] = l
		default:
			out[k] = v
		}
	}
	if s["nullable"] == true {
		out = withNull(out)
	}
	preserveUnknown := s["x-kubernetes-preserve-unknown-fields"] == true
	if props, ok := out["properties"].(Schema); ok {
		if _, set := out["additionalProperties"]; r.strict && !set && !preserveUnknown {
			out["additionalProperties"] = false
		}
		if r.nullOptional {
			required := map[string]bool{}
			list, _ := s["required"].([]any)
			for _, e := range list {
				if n, ok := e.(string); ok {
					required[n] = true
				}
			}
			for name, p := range props {
				if ps, ok := p.(Schema); ok && !required[name] {
					props[name] = withNull(ps)
				}
			}
		}
	}
	return out
}

// withNull returns a copy of s that accepts null as well; s is not modified (expansions are
// shared between the schemas that inline them).
func withNull(s Schema) Schema {
	var types []any
	switch t := s["type"].(type) {
	case string:
		types = []any{t}
	case []any:
		types = t
	}
	if types != nil {
		if slices.Contains(types, any("null")) {
			return s
		}
		c := maps.Clone(s)
		c["type"] = append(slices.Clone(types), "null")
		if enum, ok := c["enum"].([]any); ok {
			c["enum"] = append(slices.Clone(enum), nil)
		}
		return c
	}
	if alts, ok := s["oneOf"].([]any); ok {
		for _, a := range alts {
			if m, ok := a.(Schema); ok && m["type"] == "null" {
				return s
			}
		}
		c := maps.Clone(s)
		c["oneOf"] = append(slices.Clone(alts), Schema{"type": "null"})
		return c
	}
	return s
}

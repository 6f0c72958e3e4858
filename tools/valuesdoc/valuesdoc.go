// Package valuesdoc makes the values reference table of a Helm chart from the comments of its
// values.yaml, in the helm-docs convention: a "# -- description" comment right above a key
// (continued on the "#" lines below it) documents that key; "# -- (type) description" overrides
// the type shown; a "# @default -- text" line overrides the default shown.
//
// Every key whose value is a scalar, a list or an empty map is a row; a map is a row if it is
// documented itself, and then it stands for its keys (only those with their own description get
// rows too). A value neither documented nor under a documented map is an error, so a new value
// cannot go undocumented.
package valuesdoc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// The chart's values, its reference table, and the command that regenerates the table, paths
// relative to the repository's root.
const (
	ChartValues       = "charts/portcullis/values.yaml"
	Table             = "docs/values.md"
	RegenerateCommand = "go tool task docs:values"
)

// Row is one documented value.
type Row struct {
	Key, Type, Default, Description string
}

var (
	descriptionLine = regexp.MustCompile(`^#\s*--\s?(?:\(([^)]+)\)\s*)?(.*)$`)
	defaultLine     = regexp.MustCompile(`^#\s*@default\s*--\s?(.*)$`)
	plainKey        = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)
)

// Rows reads values.yaml and returns its documented values in file order.
func Rows(values []byte) ([]Row, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(values, &doc); err != nil {
		return nil, fmt.Errorf("parsing values: %w", err)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, errors.New("values: the document is not a map")
	}
	var rows []Row
	var undocumented []string
	walk(root, "", false, &rows, &undocumented)
	if len(undocumented) > 0 {
		return rows, fmt.Errorf("values without a \"# --\" description: %s", strings.Join(undocumented, ", "))
	}
	return rows, nil
}

// walk lists the rows of map m. Under a documented map (covered), the map's row stands for
// its keys: only those documented themselves get rows of their own.
func walk(m *yaml.Node, prefix string, covered bool, rows *[]Row, undocumented *[]string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		key := join(prefix, k.Value)
		desc, typ, def, documented := parseComment(k.HeadComment)
		nested := v.Kind == yaml.MappingNode && len(v.Content) > 0
		if documented || (!nested && !covered) {
			if !documented {
				*undocumented = append(*undocumented, key)
			}
			if typ == "" {
				typ = typeOf(v)
			}
			if def == "" {
				def = "`" + render(v) + "`"
			}
			*rows = append(*rows, Row{Key: key, Type: typ, Default: def, Description: desc})
		}
		if nested {
			walk(v, key, covered || documented, rows, undocumented)
		}
	}
}

// join appends a key to a dotted path, quoting keys that are not plain identifiers.
func join(prefix, key string) string {
	if !plainKey.MatchString(key) {
		key = `"` + key + `"`
	}
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// parseComment reads the last "# --" block of a key's head comment (lines above it, such as
// section headings, are not part of the description).
func parseComment(head string) (desc, typ, def string, ok bool) {
	lines := strings.Split(head, "\n")
	start := -1
	for i, l := range lines {
		if descriptionLine.MatchString(strings.TrimSpace(l)) {
			start = i
		}
	}
	if start < 0 {
		return "", "", "", false
	}
	var parts []string
	for i, l := range lines[start:] {
		l = strings.TrimSpace(l)
		if i == 0 {
			m := descriptionLine.FindStringSubmatch(l)
			typ = m[1]
			parts = append(parts, strings.TrimSpace(m[2]))
			continue
		}
		if m := defaultLine.FindStringSubmatch(l); m != nil {
			def = strings.TrimSpace(m[1])
			continue
		}
		parts = append(parts, strings.TrimSpace(strings.TrimPrefix(l, "#")))
	}
	return strings.Join(strings.Fields(strings.Join(parts, " ")), " "), typ, def, true
}

func typeOf(v *yaml.Node) string {
	switch v.Kind {
	case yaml.MappingNode:
		return "object"
	case yaml.SequenceNode:
		return "list"
	case yaml.AliasNode:
		return typeOf(v.Alias)
	}
	switch v.ShortTag() {
	case "!!int":
		return "int"
	case "!!float":
		return "float"
	case "!!bool":
		return "bool"
	case "!!null":
		return "null"
	}
	return "string"
}

// render writes a value on one line, as JSON (strings quoted, maps and lists in flow style).
func render(v *yaml.Node) string {
	var x any
	if err := v.Decode(&x); err != nil {
		return v.Value
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(x); err != nil {
		return v.Value
	}
	return strings.TrimSpace(b.String())
}

// Markdown renders the table with a heading and a note naming the source and the command that
// regenerates it.
func Markdown(rows []Row, source, command string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Values reference\n\n")
	fmt.Fprintf(&b, "<!-- Generated from %s by `%s`; do not edit. -->\n\n", source, command)
	fmt.Fprintf(&b, "Every value of `%s`, with its default. `docs/install.md` explains the choices.\n\n", source)
	b.WriteString("| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", cell(r.Key), text(r.Type), cell(r.Default), text(r.Description))
	}
	return b.Bytes()
}

// cell escapes what would end a table cell or line.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

// text is a cell of prose: angle brackets are escaped, or Markdown would take <registry> for a
// tag and drop it.
func text(s string) string {
	return strings.NewReplacer("<", "&lt;", ">", "&gt;").Replace(cell(s))
}

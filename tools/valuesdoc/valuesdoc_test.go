package valuesdoc_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
	"github.com/portcullis-mesh/portcullis/tools/valuesdoc"
)

// The committed reference table must be what the chart's values.yaml generates.
func TestCommittedTableMatchesTheChartValues(t *testing.T) {
	root, err := workspace.Root()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(root, valuesdoc.ChartValues))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := valuesdoc.Rows(src)
	if err != nil {
		t.Fatalf("%s: %v", valuesdoc.ChartValues, err)
	}
	want := valuesdoc.Markdown(rows, valuesdoc.ChartValues, valuesdoc.RegenerateCommand)
	have, err := os.ReadFile(filepath.Join(root, valuesdoc.Table))
	if err != nil {
		t.Fatalf("%v: run `%s`", err, valuesdoc.RegenerateCommand)
	}
	if string(have) != string(want) {
		t.Fatalf("%s is stale (its first differing line: %q): run `%s`", valuesdoc.Table, firstDiff(string(have), string(want)), valuesdoc.RegenerateCommand)
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return al[i]
		}
	}
	return "(one is a prefix of the other)"
}

const sample = `# Title comment, not a description.

global:
  # -- Trust domain.
  trustDomain: cluster.local
  image:
    # A heading for the next key.
    #
    # -- Image tag; empty means the appVersion,
    # continued on a second line.
    tag: ""
  # -- (int) Port, typed by the comment.
  port: "8080"
  # -- Annotations of every pod.
  # @default -- none
  podAnnotations:
    prometheus.io/scrape: "true"
    # -- A documented key under a documented map.
    extra: x
  # -- Replicas.
  replicas: 2
  # -- Tolerations.
  tolerations:
    - operator: Exists
  # -- Empty map.
  nodeSelector: {}
  # -- Pipes | and <angles>.
  note: a|b
  # -- Enabled.
  enabled: true
  # -- Nothing.
  nothing: null
`

func TestRowsFollowTheHelmDocsConvention(t *testing.T) {
	rows, err := valuesdoc.Rows([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	want := []valuesdoc.Row{
		{"global.trustDomain", "string", "`\"cluster.local\"`", "Trust domain."},
		{"global.image.tag", "string", "`\"\"`", "Image tag; empty means the appVersion, continued on a second line."},
		{"global.port", "int", "`\"8080\"`", "Port, typed by the comment."},
		{"global.podAnnotations", "object", "none", "Annotations of every pod."},
		{"global.podAnnotations.extra", "string", "`\"x\"`", "A documented key under a documented map."},
		{"global.replicas", "int", "`2`", "Replicas."},
		{"global.tolerations", "list", "`[{\"operator\":\"Exists\"}]`", "Tolerations."},
		{"global.nodeSelector", "object", "`{}`", "Empty map."},
		{"global.note", "string", "`\"a|b\"`", "Pipes | and <angles>."},
		{"global.enabled", "bool", "`true`", "Enabled."},
		{"global.nothing", "null", "`null`", "Nothing."},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Fatalf("rows:\n%+v\nwant:\n%+v", rows, want)
	}
	md := string(valuesdoc.Markdown(rows, "values.yaml", "make docs"))
	for _, s := range []string{
		"| `global.note` | string | `\"a\\|b\"` | Pipes \\| and &lt;angles&gt;. |\n",
		"Generated from values.yaml by `make docs`",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}
}

func TestUndocumentedValuesAreAnError(t *testing.T) {
	_, err := valuesdoc.Rows([]byte("a:\n  # -- Documented.\n  b: 1\n  c: 2\n# -- Map.\nd:\n  e: 3\nf:\n  g: [1]\n"))
	if err == nil || !strings.Contains(err.Error(), "a.c, f.g") {
		t.Fatalf("err = %v, want a.c and f.g named (d.e is covered by d's description)", err)
	}
}

func TestQuotedKeys(t *testing.T) {
	rows, err := valuesdoc.Rows([]byte("annotations:\n  # -- Scrape.\n  prometheus.io/scrape: \"true\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Key != `annotations."prometheus.io/scrape"` {
		t.Fatalf("rows %+v", rows)
	}
}

package workloadapi

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// DefaultPathTemplate is Portcullis's SPIFFE ID layout.
const DefaultPathTemplate = "/ns/{namespace}/sa/{serviceAccount}"

// AttributesConfig is the -attributes-file (YAML or JSON): rules tried in order, the first whose
// path template matches a SPIFFE ID's path gives its attributes.
//
//	rules:
//	  - path: /ns/{namespace}/sa/{serviceAccount}
//	    namespaceLabels:        # attribute: label of the namespace captured as {namespace}
//	      tenant: portcullis.dev/tenant
//	      app: app.kubernetes.io/part-of
type AttributesConfig struct {
	Rules []AttributeRule `yaml:"rules" json:"rules"`
}

// AttributeRule maps one path layout to attributes.
type AttributeRule struct {
	// Path is a template of the ID's path: literal segments and {name} segments, each capturing
	// one segment as the attribute name.
	Path string `yaml:"path" json:"path"`
	// NamespaceLabels names attributes taken from the labels of the namespace the path captured
	// as {namespace}; a label the namespace lacks gives no attribute.
	NamespaceLabels map[string]string `yaml:"namespaceLabels" json:"namespaceLabels"`
}

// NamespaceLabels tells the labels of a namespace (Namespaces).
type NamespaceLabels interface {
	Labels(namespace string) (map[string]string, bool)
}

// Attributes maps SPIFFE IDs to named attributes. A nil *Attributes maps every ID to none.
type Attributes struct {
	td     spiffeid.TrustDomain
	rules  []compiledRule
	labels NamespaceLabels
}

type compiledRule struct {
	re              *regexp.Regexp
	names           []string
	namespaceLabels map[string]string
}

var attributeName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)

// LoadAttributesFile reads an AttributesConfig; path "" is the default: DefaultPathTemplate and
// no labels.
func LoadAttributesFile(path string) (AttributesConfig, error) {
	if path == "" {
		return AttributesConfig{Rules: []AttributeRule{{Path: DefaultPathTemplate}}}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return AttributesConfig{}, fmt.Errorf("-attributes-file: %w", err)
	}
	var cfg AttributesConfig
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true) // a misspelt key is a mistake, not a rule that never matches
	if err := dec.Decode(&cfg); err != nil {
		return AttributesConfig{}, fmt.Errorf("-attributes-file %s: %w", path, err)
	}
	return cfg, nil
}

// NewAttributes compiles cfg for IDs of td; labels may be nil if no rule takes namespace labels.
// Every problem of cfg is reported at once.
func NewAttributes(cfg AttributesConfig, td spiffeid.TrustDomain, labels NamespaceLabels) (*Attributes, error) {
	a := &Attributes{td: td, labels: labels}
	var errs []error
	for i, r := range cfg.Rules {
		c, err := compileRule(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %d (%q): %w", i+1, r.Path, err))
			continue
		}
		if len(c.namespaceLabels) > 0 && labels == nil {
			errs = append(errs, fmt.Errorf("rule %d (%q): namespace labels are not available to this agent", i+1, r.Path))
		}
		a.rules = append(a.rules, c)
	}
	if len(cfg.Rules) == 0 {
		errs = append(errs, errors.New("no rules"))
	}
	return a, errors.Join(errs...)
}

func compileRule(r AttributeRule) (compiledRule, error) {
	if !strings.HasPrefix(r.Path, "/") {
		return compiledRule{}, errors.New("the path template must start with /")
	}
	var (
		c   compiledRule
		pat strings.Builder
	)
	seen := map[string]bool{}
	pat.WriteString("^")
	for _, seg := range strings.Split(r.Path[1:], "/") {
		pat.WriteString("/")
		name, isVar := strings.CutPrefix(seg, "{")
		if !isVar {
			if seg == "" || strings.ContainsAny(seg, "{}") {
				return compiledRule{}, fmt.Errorf("bad segment %q", seg)
			}
			pat.WriteString(regexp.QuoteMeta(seg))
			continue
		}
		name, closed := strings.CutSuffix(name, "}")
		if !closed || !attributeName.MatchString(name) || seen[name] {
			return compiledRule{}, fmt.Errorf("bad or repeated placeholder %q (want {name}, a name once)", seg)
		}
		seen[name] = true
		c.names = append(c.names, name)
		pat.WriteString("([^/]+)")
	}
	pat.WriteString("$")
	c.re = regexp.MustCompile(pat.String())
	for attr := range r.NamespaceLabels {
		switch {
		case !attributeName.MatchString(attr):
			return compiledRule{}, fmt.Errorf("bad attribute name %q", attr)
		case seen[attr]:
			return compiledRule{}, fmt.Errorf("attribute %q is both a placeholder and a namespace label", attr)
		case !seen["namespace"]:
			return compiledRule{}, errors.New("namespaceLabels need a {namespace} placeholder in the path")
		}
	}
	c.namespaceLabels = r.NamespaceLabels
	return c, nil
}

// Of returns id's attributes: those of the first rule whose template matches its path; none for
// an ID of another trust domain or one no rule matches.
func (a *Attributes) Of(id spiffeid.ID) map[string]string {
	if a == nil || id.TrustDomain() != a.td {
		return map[string]string{}
	}
	for _, r := range a.rules {
		m := r.re.FindStringSubmatch(id.Path())
		if m == nil {
			continue
		}
		out := make(map[string]string, len(r.names)+len(r.namespaceLabels))
		for i, name := range r.names {
			out[name] = m[i+1]
		}
		if len(r.namespaceLabels) > 0 {
			if labels, ok := a.labels.Labels(out["namespace"]); ok {
				for attr, label := range r.namespaceLabels {
					if v, ok := labels[label]; ok {
						out[attr] = v
					}
				}
			}
		}
		return out
	}
	return map[string]string{}
}

// Namespaces is the agent's view of the cluster's namespaces and their labels, as mcp-sync
// sends them (an mcpclient.Applier for mcpclient.NamespaceTypeURL). It is safe for concurrent use.
type Namespaces struct {
	mu     sync.RWMutex
	labels map[string]map[string]string
}

// NewNamespaces returns an empty view.
func NewNamespaces() *Namespaces { return &Namespaces{labels: map[string]map[string]string{}} }

// Apply replaces the view with a full state of Namespace resources.
func (n *Namespaces) Apply(resources []*anypb.Any) error {
	next := make(map[string]map[string]string, len(resources))
	for _, r := range resources {
		if r.GetTypeUrl() != mcpclient.NamespaceTypeURL {
			return fmt.Errorf("unexpected resource type %s", r.GetTypeUrl())
		}
		ns := &mcpv1.Namespace{}
		if err := r.UnmarshalTo(ns); err != nil {
			return fmt.Errorf("decoding namespace: %w", err)
		}
		next[ns.GetName()] = ns.GetLabels()
	}
	n.mu.Lock()
	n.labels = next
	n.mu.Unlock()
	return nil
}

// Labels implements NamespaceLabels.
func (n *Namespaces) Labels(namespace string) (map[string]string, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	l, ok := n.labels[namespace]
	return l, ok
}

package convert

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// Group and Version of the Portcullis custom resources.
const (
	Group   = "security.portcullis.dev"
	Version = "v1alpha1"
)

// The custom resources' API resources.
var (
	KeySecretResource   = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "keysecrets"}
	TLSPolicyResource   = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "tlspolicies"}
	ScopeConfigResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "scopeconfigs"}
)

// PodIPLabel is the pseudo-label a selector uses to match a pod's IP (one instance).
const PodIPLabel = "security.portcullis.dev/pod-ip"

// The specs as the CRDs define them; decoding is strict, so an unknown field is an error.
type labelSelector = metav1.LabelSelector

type keySecretSpec struct {
	Selector *labelSelector    `json:"selector"`
	Data     map[string]string `json:"data"`
}

type tlsPolicySpec struct {
	Service    string `json:"service,omitempty"`
	ServerMode string `json:"serverMode"`
	ClientMode string `json:"clientMode,omitempty"`
}

type scopeConfigSpec struct {
	Selector *labelSelector `json:"selector"`
	Policy   string         `json:"policy"`
}

// KeySecret converts a KeySecret. The API server checks the CRD schema, but mcp-sync checks
// again what it relies on (objects can predate a schema change, and files have no schema).
func KeySecret(u *unstructured.Unstructured) (*mcpv1.KeySecret, error) {
	ns, name, err := meta(u)
	if err != nil {
		return nil, err
	}
	var spec keySecretSpec
	if err := decodeSpec(u, &spec); err != nil {
		return nil, err
	}
	sel, err := selector(spec.Selector)
	if err != nil {
		return nil, err
	}
	if len(spec.Data) == 0 {
		return nil, fmt.Errorf("spec.data is empty")
	}
	data := make(map[string][]byte, len(spec.Data))
	for k, v := range spec.Data {
		if errs := validation.IsConfigMapKey(k); len(errs) > 0 {
			return nil, fmt.Errorf("spec.data key %q is invalid: %v", k, errs)
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("spec.data[%q] is not base64: %w", k, err)
		}
		data[k] = b
	}
	return &mcpv1.KeySecret{Name: Key(ns, name), Namespace: ns, KeySecretName: name, Uid: string(u.GetUID()),
		Selector: sel, Data: data}, nil
}

var (
	serverModes = map[string]mcpv1.TLSPolicy_ServerMode{
		"DISABLE": mcpv1.TLSPolicy_SERVER_MODE_DISABLE, "PERMISSIVE": mcpv1.TLSPolicy_SERVER_MODE_PERMISSIVE,
		"STRICT": mcpv1.TLSPolicy_SERVER_MODE_STRICT,
	}
	clientModes = map[string]mcpv1.TLSPolicy_ClientMode{
		"": mcpv1.TLSPolicy_CLIENT_MODE_MUTUAL, "MUTUAL": mcpv1.TLSPolicy_CLIENT_MODE_MUTUAL,
		"DISABLE": mcpv1.TLSPolicy_CLIENT_MODE_DISABLE,
	}
)

// TLSPolicy converts a TLSPolicy.
func TLSPolicy(u *unstructured.Unstructured) (*mcpv1.TLSPolicy, error) {
	ns, name, err := meta(u)
	if err != nil {
		return nil, err
	}
	var spec tlsPolicySpec
	if err := decodeSpec(u, &spec); err != nil {
		return nil, err
	}
	server, ok := serverModes[spec.ServerMode]
	if !ok {
		return nil, fmt.Errorf("spec.serverMode %q is not DISABLE, PERMISSIVE or STRICT", spec.ServerMode)
	}
	client, ok := clientModes[spec.ClientMode]
	if !ok {
		return nil, fmt.Errorf("spec.clientMode %q is not DISABLE or MUTUAL", spec.ClientMode)
	}
	return &mcpv1.TLSPolicy{Name: Key(ns, name), Namespace: ns, PolicyName: name, Uid: string(u.GetUID()),
		Service: spec.Service, ServerMode: server, ClientMode: client}, nil
}

// ScopeConfig converts a ScopeConfig.
func ScopeConfig(u *unstructured.Unstructured) (*mcpv1.ScopeConfig, error) {
	ns, name, err := meta(u)
	if err != nil {
		return nil, err
	}
	var spec scopeConfigSpec
	if err := decodeSpec(u, &spec); err != nil {
		return nil, err
	}
	sel, err := selector(spec.Selector)
	if err != nil {
		return nil, err
	}
	if spec.Policy == "" {
		return nil, fmt.Errorf("spec.policy is empty")
	}
	return &mcpv1.ScopeConfig{Name: Key(ns, name), Namespace: ns, ScopeName: name, Uid: string(u.GetUID()),
		Selector: sel, Policy: spec.Policy}, nil
}

func meta(u *unstructured.Unstructured) (ns, name string, err error) {
	ns, name = u.GetNamespace(), u.GetName()
	if ns == "" {
		ns = defaultName
	}
	if err := checkName(u.GetKind(), name, validation.IsDNS1123Subdomain); err != nil {
		return "", "", err
	}
	if err := checkName(u.GetKind()+" "+name+" namespace", ns, validation.IsDNS1123Label); err != nil {
		return "", "", err
	}
	return ns, name, nil
}

func decodeSpec(u *unstructured.Unstructured, into any) error {
	raw, ok := u.Object["spec"]
	if !ok {
		return fmt.Errorf("no spec")
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}

// selector checks a selector the way the API server would evaluate it (an In without values,
// an invalid key) and converts it.
func selector(s *labelSelector) (*mcpv1.LabelSelector, error) {
	if s == nil {
		return nil, fmt.Errorf("spec.selector is required")
	}
	if _, err := metav1.LabelSelectorAsSelector(s); err != nil {
		return nil, fmt.Errorf("spec.selector: %w", err)
	}
	out := &mcpv1.LabelSelector{MatchLabels: s.MatchLabels}
	for _, r := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions,
			&mcpv1.LabelSelectorRequirement{Key: r.Key, Operator: string(r.Operator), Values: r.Values})
	}
	return out, nil
}

// Selector turns a converted selector back into one that matches label sets.
func Selector(s *mcpv1.LabelSelector) (labels.Selector, error) {
	ls := &metav1.LabelSelector{MatchLabels: s.GetMatchLabels()}
	for _, r := range s.GetMatchExpressions() {
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: r.GetKey(), Operator: metav1.LabelSelectorOperator(r.GetOperator()), Values: r.GetValues()})
	}
	return metav1.LabelSelectorAsSelector(ls)
}

// PodLabels are the labels selectors match a pod against: its own plus PodIPLabel.
func PodLabels(p *mcpv1.Pod) labels.Set {
	set := make(labels.Set, len(p.GetLabels())+1)
	for k, v := range p.GetLabels() {
		set[k] = v
	}
	if p.GetPodIp() != "" {
		set[PodIPLabel] = p.GetPodIp()
	}
	return set
}

package keysecrets_test

import (
	"testing"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/keysecrets"
)

func TestMatchesLikeKubernetes(t *testing.T) {
	pod := &mcpv1.Pod{Labels: map[string]string{"app": "web", "tier": "front"}, PodIp: "10.0.0.7"}
	req := func(key, op string, values ...string) *mcpv1.LabelSelectorRequirement {
		return &mcpv1.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	for _, tc := range []struct {
		name string
		sel  *mcpv1.LabelSelector
		want bool
	}{
		{"nil selects nothing", nil, false},
		{"empty selects every pod", &mcpv1.LabelSelector{}, true},
		{"matchLabels", &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, true},
		{"matchLabels other value", &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "cart"}}, false},
		{"matchLabels missing key", &mcpv1.LabelSelector{MatchLabels: map[string]string{"zone": "a"}}, false},
		{"In", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("app", "In", "cart", "web")}}, true},
		{"In missing", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("zone", "In", "a")}}, false},
		{"NotIn", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("app", "NotIn", "web")}}, false},
		{"NotIn absent key", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("zone", "NotIn", "a")}}, true},
		{"Exists", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("tier", "Exists")}}, true},
		{"DoesNotExist", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("tier", "DoesNotExist")}}, false},
		{"unknown operator", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("app", "Gt", "1")}}, false},
		{"pod IP pseudo-label", &mcpv1.LabelSelector{MatchLabels: map[string]string{keysecrets.PodIPLabel: "10.0.0.7"}}, true},
		{"pod IP other", &mcpv1.LabelSelector{MatchLabels: map[string]string{keysecrets.PodIPLabel: "10.0.0.8"}}, false},
		{"all must hold", &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "web"},
			MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("tier", "In", "back")}}, false},
	} {
		if got := keysecrets.Matches(tc.sel, pod); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSize(t *testing.T) {
	ks := &mcpv1.KeySecret{Data: map[string][]byte{"a": make([]byte, 10), "bc": make([]byte, 5)}}
	if n := keysecrets.Size(ks); n != 18 {
		t.Errorf("Size = %d, want 18", n)
	}
}

package snapshot

import (
	"k8s.io/apimachinery/pkg/labels"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/convert"
)

// secretIndex finds which KeySecrets select which pods. Both are indexed by namespace, since a
// KeySecret selects only pods of its own namespace: a pod change costs the KeySecrets of its
// namespace, a KeySecret change the pods of its namespace. Not safe for concurrent use.
type secretIndex struct {
	selectors map[string]map[string]labels.Selector // namespace -> KeySecret name -> selector
	pods      map[string]map[string]*mcpv1.Pod      // namespace -> pod name -> pod
}

func newSecretIndex() *secretIndex {
	return &secretIndex{selectors: map[string]map[string]labels.Selector{}, pods: map[string]map[string]*mcpv1.Pod{}}
}

func (x *secretIndex) addPod(p *mcpv1.Pod) {
	ns := x.pods[p.GetNamespace()]
	if ns == nil {
		ns = map[string]*mcpv1.Pod{}
		x.pods[p.GetNamespace()] = ns
	}
	ns[p.GetName()] = p
}

func (x *secretIndex) removePod(p *mcpv1.Pod) {
	ns := x.pods[p.GetNamespace()]
	delete(ns, p.GetName())
	if len(ns) == 0 {
		delete(x.pods, p.GetNamespace())
	}
}

// matching returns the names of the KeySecrets that select p.
func (x *secretIndex) matching(p *mcpv1.Pod) []string {
	sels := x.selectors[p.GetNamespace()]
	if len(sels) == 0 {
		return nil
	}
	set := convert.PodLabels(p)
	var out []string
	for name, sel := range sels {
		if sel.Matches(set) {
			out = append(out, name)
		}
	}
	return out
}

// setSecret replaces old with next (either may be nil) and calls count for every pod the old
// one selected (-1) and the new one selects (+1).
func (x *secretIndex) setSecret(old, next *mcpv1.KeySecret, count func(pod *mcpv1.Pod, delta int)) {
	if old != nil {
		if sel, ok := x.selectors[old.GetNamespace()][old.GetName()]; ok {
			x.each(old.GetNamespace(), sel, func(p *mcpv1.Pod) { count(p, -1) })
			delete(x.selectors[old.GetNamespace()], old.GetName())
			if len(x.selectors[old.GetNamespace()]) == 0 {
				delete(x.selectors, old.GetNamespace())
			}
		}
	}
	if next == nil {
		return
	}
	sel, err := convert.Selector(next.GetSelector())
	if err != nil {
		// Sources reject such selectors; if one gets through, it selects nothing rather than
		// everything.
		sel = labels.Nothing()
	}
	if x.selectors[next.GetNamespace()] == nil {
		x.selectors[next.GetNamespace()] = map[string]labels.Selector{}
	}
	x.selectors[next.GetNamespace()][next.GetName()] = sel
	x.each(next.GetNamespace(), sel, func(p *mcpv1.Pod) { count(p, +1) })
}

func (x *secretIndex) each(ns string, sel labels.Selector, f func(*mcpv1.Pod)) {
	for _, p := range x.pods[ns] {
		if sel.Matches(convert.PodLabels(p)) {
			f(p)
		}
	}
}

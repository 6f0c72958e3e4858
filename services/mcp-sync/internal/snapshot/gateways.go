package snapshot

import (
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// gatewayIndex finds which gateway certificates the pods may receive: a certificate goes to the
// pods whose service account is in its allowed list. Pods and certificates are both indexed by
// service account ("<namespace>/<name>"), so a pod change costs the certificates of its service
// account and a certificate change the pods of its allowed accounts. Not safe for concurrent use.
type gatewayIndex struct {
	bySA map[string]map[string]bool       // service account -> certificate names
	pods map[string]map[string]*mcpv1.Pod // service account -> pod name -> pod
}

func newGatewayIndex() *gatewayIndex {
	return &gatewayIndex{bySA: map[string]map[string]bool{}, pods: map[string]map[string]*mcpv1.Pod{}}
}

func podAccount(p *mcpv1.Pod) string { return p.GetNamespace() + "/" + p.GetServiceAccount() }

func (x *gatewayIndex) addPod(p *mcpv1.Pod) {
	sa := podAccount(p)
	if x.pods[sa] == nil {
		x.pods[sa] = map[string]*mcpv1.Pod{}
	}
	x.pods[sa][p.GetName()] = p
}

func (x *gatewayIndex) removePod(p *mcpv1.Pod) {
	sa := podAccount(p)
	delete(x.pods[sa], p.GetName())
	if len(x.pods[sa]) == 0 {
		delete(x.pods, sa)
	}
}

// matching returns the names of the certificates p's service account may receive.
func (x *gatewayIndex) matching(p *mcpv1.Pod) []string {
	var out []string
	for name := range x.bySA[podAccount(p)] {
		out = append(out, name)
	}
	return out
}

// setCert replaces old with next (either may be nil) and calls count for every pod the old one
// went to (-1) and the new one goes to (+1).
func (x *gatewayIndex) setCert(old, next *mcpv1.GatewayCertificate, count func(pod *mcpv1.Pod, delta int)) {
	for _, sa := range old.GetAllowedServiceAccounts() {
		if !x.bySA[sa][old.GetName()] {
			continue // a duplicate in the list
		}
		delete(x.bySA[sa], old.GetName())
		if len(x.bySA[sa]) == 0 {
			delete(x.bySA, sa)
		}
		for _, p := range x.pods[sa] {
			count(p, -1)
		}
	}
	for _, sa := range next.GetAllowedServiceAccounts() {
		if x.bySA[sa][next.GetName()] {
			continue
		}
		if x.bySA[sa] == nil {
			x.bySA[sa] = map[string]bool{}
		}
		x.bySA[sa][next.GetName()] = true
		for _, p := range x.pods[sa] {
			count(p, +1)
		}
	}
}

// perNode reports whether a kind is split by node rather than shared by every view.
func perNode(k inventory.Kind) bool {
	return k == inventory.Pod || k == inventory.KeySecret || k == inventory.GatewayCertificate
}

// countGatewayLocked records that a pod allowed to read gateway certificate gc came (delta +1)
// or went (-1).
func (m *Manager) countGatewayLocked(d *dirty, pod *mcpv1.Pod, gc string, delta int) {
	if pod.GetNodeName() == "" {
		return
	}
	n := m.nodes[pod.GetNodeName()]
	if n == nil {
		if delta < 0 {
			return
		}
		n = m.node(pod.GetNodeName())
	}
	before := n.gateways[gc]
	if n.gateways[gc] += delta; n.gateways[gc] <= 0 {
		delete(n.gateways, gc)
	}
	if (before > 0) != (n.gateways[gc] > 0) {
		n.gatewaySet = nil
		d.nodes[pod.GetNodeName()] = true
	}
}

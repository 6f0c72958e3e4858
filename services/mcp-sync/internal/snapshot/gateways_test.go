package snapshot

import (
	"slices"
	"testing"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

func podAs(name, node, sa string) *mcpv1.Pod {
	p := pod("shop", name, node)
	p.ServiceAccount = sa
	return p
}

func gatewayCert(name string, data string, allowed ...string) inventory.Change {
	return inventory.Change{Kind: inventory.GatewayCertificate, Name: "shop/" + name, Object: &mcpv1.GatewayCertificate{
		Name: "shop/" + name, Namespace: "shop", SecretName: name, CertificateChain: []byte(data), AllowedServiceAccounts: allowed,
	}}
}

// A node's view carries a gateway certificate only while a pod on it runs as an allowed service
// account; the cluster view (citadel) never carries one.
func TestGatewayCertificatesFollowAllowedPods(t *testing.T) {
	m, _ := newManager(t)
	if err := m.Update(state(podAs("gw-0", "node-a", "gateway"), podAs("web-0", "node-b", "web"))); err != nil {
		t.Fatal(err)
	}
	apply := func(cs ...inventory.Change) {
		t.Helper()
		if err := m.Apply(inventory.Update{Changes: cs}); err != nil {
			t.Fatal(err)
		}
	}
	certs := func(node string) []string { return names(view(t, m, node), mcpclient.GatewayCertificateTypeURL) }
	apply(gatewayCert("gw-tls", "v1", "shop/gateway"))
	if got := certs("node-a"); !slices.Equal(got, []string{"shop/gw-tls"}) {
		t.Fatalf("node-a = %v, want shop/gw-tls", got)
	}
	if got := certs("node-b"); len(got) != 0 {
		t.Fatalf("node-b = %v, want none", got)
	}
	if got := certs(mcpclient.ClusterNodeID); len(got) != 0 {
		t.Fatalf("cluster view = %v, want none", got)
	}

	// A rotation changes node-a's version and leaves node-b's alone.
	versionB := view(t, m, "node-b").GetVersion(mcpclient.GatewayCertificateTypeURL)
	versionA := view(t, m, "node-a").GetVersion(mcpclient.GatewayCertificateTypeURL)
	apply(gatewayCert("gw-tls", "v2", "shop/gateway"))
	if view(t, m, "node-a").GetVersion(mcpclient.GatewayCertificateTypeURL) == versionA {
		t.Error("node-a's version did not change with the rotation")
	}
	if view(t, m, "node-b").GetVersion(mcpclient.GatewayCertificateTypeURL) != versionB {
		t.Error("node-b's version changed with a certificate it does not hold")
	}

	// An allowed pod lands on node-b, then leaves.
	apply(inventory.Change{Kind: inventory.Pod, Name: "shop/gw-1", Object: podAs("gw-1", "node-b", "gateway")})
	if got := certs("node-b"); !slices.Equal(got, []string{"shop/gw-tls"}) {
		t.Fatalf("node-b with a gateway pod = %v", got)
	}
	apply(inventory.Change{Kind: inventory.Pod, Name: "shop/gw-1"})
	if got := certs("node-b"); len(got) != 0 {
		t.Fatalf("node-b after the gateway pod left = %v", got)
	}

	// The review result changes: web may read it, gateway no longer.
	apply(gatewayCert("gw-tls", "v2", "shop/web"))
	if a, b := certs("node-a"), certs("node-b"); len(a) != 0 || !slices.Equal(b, []string{"shop/gw-tls"}) {
		t.Fatalf("after the allowed list changed: node-a = %v, node-b = %v", a, b)
	}

	// A full update from the source does not drop what the gateway controller applied.
	if err := m.Update(state(podAs("gw-0", "node-a", "gateway"), podAs("web-0", "node-b", "web"))); err != nil {
		t.Fatal(err)
	}
	if got := certs("node-b"); !slices.Equal(got, []string{"shop/gw-tls"}) {
		t.Fatalf("node-b after a full source update = %v", got)
	}

	apply(inventory.Change{Kind: inventory.GatewayCertificate, Name: "shop/gw-tls"})
	if got := certs("node-b"); len(got) != 0 {
		t.Fatalf("node-b after the certificate was withdrawn = %v", got)
	}
}

package servicetls_test

import (
	"flag"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

var td = spiffeid.RequireTrustDomainFromString("portcullis.test")

func TestServiceID(t *testing.T) {
	id, err := servicetls.ServiceID(td, servicetls.Citadel)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := id.String(), "spiffe://portcullis.test/portcullis/citadel"; got != want {
		t.Fatalf("ServiceID = %s, want %s", got, want)
	}
	if !servicetls.IsService(id, servicetls.Citadel) {
		t.Error("IsService(citadel ID, citadel) = false")
	}
	if servicetls.IsService(id, servicetls.KMSAdapter) {
		t.Error("IsService(citadel ID, kms-adapter) = true")
	}
	if _, err := servicetls.ServiceID(td, "bad/name"); err == nil {
		t.Error("ServiceID accepted a name with a slash")
	}
}

func TestNodeAgentID(t *testing.T) {
	id, err := servicetls.NodeAgentID(td, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := id.String(), "spiffe://portcullis.test/portcullis/nodeagent/node-1"; got != want {
		t.Fatalf("NodeAgentID = %s, want %s", got, want)
	}
	if node, ok := servicetls.NodeOf(id); !ok || node != "node-1" {
		t.Fatalf("NodeOf = %q, %v, want node-1, true", node, ok)
	}
	if servicetls.IsService(id, servicetls.NodeAgent) {
		t.Error("a node agent ID passed for the singleton service nodeagent")
	}
	if _, err := servicetls.NodeAgentID(td, ""); err == nil {
		t.Error("NodeAgentID accepted an empty node name")
	}
}

func TestNodeOfRefusesOtherIDs(t *testing.T) {
	for _, s := range []string{
		"spiffe://portcullis.test/portcullis/nodeagent",          // no node
		"spiffe://portcullis.test/portcullis/nodeagent/a/b",      // nested node
		"spiffe://portcullis.test/portcullis/citadel",            // a service
		"spiffe://portcullis.test/portcullis/nodeagentx/node-1",  // prefix lookalike
		"spiffe://portcullis.test/ns/portcullis/nodeagent/n",     // workload-shaped
		"spiffe://portcullis.test/other/portcullis/nodeagent/n1", // not at the root
		"spiffe://portcullis.test",                               // trust domain only
	} {
		id := spiffeid.RequireFromString(s)
		if node, ok := servicetls.NodeOf(id); ok {
			t.Errorf("NodeOf(%s) = %q, true; want false", s, node)
		}
	}
	// The SPIFFE parser already refuses the empty node "…/nodeagent/" (trailing slash), so NodeOf
	// can never see it; keep that assumption checked.
	if _, err := spiffeid.FromString("spiffe://portcullis.test/portcullis/nodeagent/"); err == nil {
		t.Error("spiffeid accepted a trailing slash; NodeOf must then refuse an empty node itself")
	}
}

func TestDescribe(t *testing.T) {
	if got := servicetls.Describe(spiffeid.ID{}); got != "an unauthenticated peer" {
		t.Errorf("Describe(zero) = %q", got)
	}
	id := spiffeid.RequireFromString("spiffe://portcullis.test/portcullis/mcp-sync")
	if got := servicetls.Describe(id); got != `"spiffe://portcullis.test/portcullis/mcp-sync"` {
		t.Errorf("Describe = %q", got)
	}
}

func TestFilesFlagsAndValidate(t *testing.T) {
	var f servicetls.Files
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	f.RegisterFlags(fs)
	if err := f.Validate(); err == nil {
		t.Error("Validate accepted empty files")
	}
	if err := fs.Parse([]string{"-tls-cert=c.pem", "-tls-key=k.pem"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Validate(); err == nil {
		t.Error("Validate accepted a missing -tls-ca")
	}
	if err := fs.Parse([]string{"-tls-ca=ca.pem"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if f != (servicetls.Files{CertFile: "c.pem", KeyFile: "k.pem", CAFile: "ca.pem"}) {
		t.Errorf("flags bound to %+v", f)
	}
}

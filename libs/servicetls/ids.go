// Package servicetls holds the control plane's own identities: the X.509 certificates that
// Portcullis services present to each other over mTLS, and the SPIFFE IDs that name them.
//
// Control-plane certificates chain to a control-plane CA that is separate from the workload CA,
// so a workload certificate can never pass for a service (or a node agent) identity.
package servicetls

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Service names, used as the last path segment of a service's SPIFFE ID.
const (
	Citadel    = "citadel"
	KMSAdapter = "kms-adapter"
	MCPSync    = "mcp-sync"
	NodeAgent  = "nodeagent"
	// Admin is the operator's identity (the admin CLI): the only caller of kms-adapter's admin API.
	Admin = "admin"
	// NATS is the identity of a standalone NATS server run for Portcullis (tools/cmd/natsd); the
	// embedded default runs inside kms-adapter and presents kms-adapter's identity.
	NATS = "nats"
)

const pathPrefix = "/portcullis/"

// ServiceID names a singleton control-plane service: spiffe://<td>/portcullis/<service>.
func ServiceID(td spiffeid.TrustDomain, service string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "portcullis", service)
}

// NodeAgentID names the node agent of one node: spiffe://<td>/portcullis/nodeagent/<node>.
func NodeAgentID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "portcullis", NodeAgent, node)
}

// NodeOf returns the node name of a node agent ID, or false if id names no node agent.
func NodeOf(id spiffeid.ID) (string, bool) {
	node, ok := strings.CutPrefix(id.Path(), pathPrefix+NodeAgent+"/")
	if !ok || node == "" || strings.Contains(node, "/") {
		return "", false
	}
	return node, true
}

// IsService reports whether id is the ID of the named singleton service.
func IsService(id spiffeid.ID, service string) bool {
	return id.Path() == pathPrefix+service
}

// Describe renders an ID for error messages.
func Describe(id spiffeid.ID) string {
	if id.IsZero() {
		return "an unauthenticated peer"
	}
	return fmt.Sprintf("%q", id.String())
}

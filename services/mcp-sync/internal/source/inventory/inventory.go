// Package inventory holds the cluster objects mcp-sync serves, as one immutable value. It is a
// leaf package so that source implementations can name State without importing package source,
// which imports them through its registry.
package inventory

import (
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// State is the full current set of objects a source knows. Each slice is sorted by Name and holds
// no duplicate names. A State is never modified after it is handed to a sink.
type State struct {
	Pods            []*mcpv1.Pod
	ServiceAccounts []*mcpv1.ServiceAccount
	Namespaces      []*mcpv1.Namespace
}

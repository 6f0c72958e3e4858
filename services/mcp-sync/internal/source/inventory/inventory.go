// Package inventory holds the cluster objects mcp-sync serves and the changes sources report. It
// is a leaf package so that source implementations can name these types without importing
// package source, which imports them through its registry.
package inventory

import (
	"google.golang.org/protobuf/proto"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// State is the full current set of objects a source knows. Each slice is sorted by Name and holds
// no duplicate names. A State is never modified after it is handed to a sink.
type State struct {
	Pods            []*mcpv1.Pod
	ServiceAccounts []*mcpv1.ServiceAccount
	Namespaces      []*mcpv1.Namespace
	KeySecrets      []*mcpv1.KeySecret
	TLSPolicies     []*mcpv1.TLSPolicy
	ScopeConfigs    []*mcpv1.ScopeConfig
}

// Kind is a kind of served object.
type Kind int

// The served kinds.
const (
	Pod Kind = iota
	ServiceAccount
	Namespace
	KeySecret
	TLSPolicy
	ScopeConfig
	// GatewayCertificate is an opted-in kubernetes.io/tls Secret. No source reports it: the
	// gateway certificate controller (package gatewaycert) applies it to the snapshot manager.
	GatewayCertificate
	NumKinds // the number of kinds, for arrays indexed by Kind
)

var kindNames = [NumKinds]string{"Pod", "ServiceAccount", "Namespace", "KeySecret", "TLSPolicy", "ScopeConfig", "GatewayCertificate"}

func (k Kind) String() string { return kindNames[k] }

// Object is a served resource: one of the mcpv1 messages, named by its xDS resource name.
type Object interface {
	proto.Message
	GetName() string
}

// Change sets (Object non-nil) or removes (Object nil) the object Name of Kind.
type Change struct {
	Kind   Kind
	Name   string
	Object Object
}

// Update is what a source hands its sink. Objects are never modified after they are handed over.
type Update struct {
	// Full means Changes hold every object of the source, all as sets: objects not in it are
	// gone. A source's first update is always full.
	Full    bool
	Changes []Change
}

// Update returns the state as a full update.
func (s State) Update() Update {
	n := len(s.Pods) + len(s.ServiceAccounts) + len(s.Namespaces) + len(s.KeySecrets) + len(s.TLSPolicies) + len(s.ScopeConfigs)
	u := Update{Full: true, Changes: make([]Change, 0, n)}
	u.Changes = appendSets(u.Changes, Pod, s.Pods)
	u.Changes = appendSets(u.Changes, ServiceAccount, s.ServiceAccounts)
	u.Changes = appendSets(u.Changes, Namespace, s.Namespaces)
	u.Changes = appendSets(u.Changes, KeySecret, s.KeySecrets)
	u.Changes = appendSets(u.Changes, TLSPolicy, s.TLSPolicies)
	u.Changes = appendSets(u.Changes, ScopeConfig, s.ScopeConfigs)
	return u
}

func appendSets[T Object](to []Change, kind Kind, objs []T) []Change {
	for _, o := range objs {
		to = append(to, Change{Kind: kind, Name: o.GetName(), Object: o})
	}
	return to
}

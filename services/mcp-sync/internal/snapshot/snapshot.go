// Package snapshot turns the source's objects into per-node views for go-control-plane's
// snapshot cache: a node agent sees its own node's pods and the KeySecrets of those pods, citadel
// sees every pod and no KeySecret, and both see all service accounts, namespaces, TLSPolicies
// and ScopeConfigs.
package snapshot

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// typeURLs are the MCP type URLs by kind.
var typeURLs = [inventory.NumKinds]string{
	inventory.Pod:                mcpclient.PodTypeURL,
	inventory.ServiceAccount:     mcpclient.ServiceAccountTypeURL,
	inventory.Namespace:          mcpclient.NamespaceTypeURL,
	inventory.KeySecret:          mcpclient.KeySecretTypeURL,
	inventory.TLSPolicy:          mcpclient.TLSPolicyTypeURL,
	inventory.ScopeConfig:        mcpclient.ScopeConfigTypeURL,
	inventory.GatewayCertificate: mcpclient.GatewayCertificateTypeURL,
}

// TypeURLs lists the type URLs mcp-sync serves.
func TypeURLs() []string { return typeURLs[:] }

// Snapshot is one node's view. It implements cache.ResourceSnapshot, which is how the snapshot
// cache serves type URLs it does not know (cache.Snapshot only takes Envoy's own types).
// A Snapshot is immutable, and shares its type sets with other snapshots.
type Snapshot struct {
	sets [inventory.NumKinds]*typeSet
}

var _ cache.ResourceSnapshot = (*Snapshot)(nil)

func (s *Snapshot) set(typeURL string) *typeSet {
	for k, u := range typeURLs {
		if u == typeURL {
			return s.sets[k]
		}
	}
	return unservedSet
}

// GetVersion returns the version of the type's resources in this view, or "" for a type
// mcp-sync does not serve.
func (s *Snapshot) GetVersion(typeURL string) string { return s.set(typeURL).version }

// GetResourcesAndTTL returns the type's resources by name. mcp-sync resources never expire.
func (s *Snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	return s.set(typeURL).withTTL()
}

// GetResources returns the type's resources by name.
func (s *Snapshot) GetResources(typeURL string) map[string]types.Resource {
	return s.set(typeURL).resources()
}

// ConstructVersionMap does nothing: per-resource versions are computed when items are made.
func (s *Snapshot) ConstructVersionMap() error { return nil }

// GetVersionMap returns each resource's content hash, for delta streams.
func (s *Snapshot) GetVersionMap(typeURL string) map[string]string { return s.set(typeURL).versions() }

// sameAs reports whether every type has the same version in both snapshots.
func (s *Snapshot) sameAs(o *Snapshot) bool {
	for k := range s.sets {
		if s.sets[k].version != o.sets[k].version {
			return false
		}
	}
	return true
}

var (
	// emptySet is a served type with no resources: it has a version, so that a client that
	// starts with version "" receives the empty state.
	emptySet = newTypeSet(nil)
	// unservedSet has version "": the cache never answers for it.
	unservedSet = &typeSet{}
)

// typeSet is the resources of one type in one or more views. The maps the cache asks for are
// derived on first use: the cluster-wide sets are rebuilt often and read only when citadel's
// stream needs a response.
type typeSet struct {
	version string
	items   map[string]item // never modified

	once       sync.Once
	withTTLMap map[string]types.ResourceWithTTL
	resMap     map[string]types.Resource
	versionMap map[string]string
}

func (ts *typeSet) build() {
	ts.once.Do(func() {
		ts.withTTLMap = make(map[string]types.ResourceWithTTL, len(ts.items))
		ts.resMap = make(map[string]types.Resource, len(ts.items))
		ts.versionMap = make(map[string]string, len(ts.items))
		for _, it := range ts.items {
			ts.withTTLMap[it.name] = types.ResourceWithTTL{Resource: it.resource}
			ts.resMap[it.name] = it.resource
			ts.versionMap[it.name] = it.version
		}
	})
}

func (ts *typeSet) withTTL() map[string]types.ResourceWithTTL { ts.build(); return ts.withTTLMap }
func (ts *typeSet) resources() map[string]types.Resource      { ts.build(); return ts.resMap }
func (ts *typeSet) versions() map[string]string               { ts.build(); return ts.versionMap }

// item is one resource with its content hash, computed once per change and shared by every view
// that includes it.
type item struct {
	name     string
	resource types.Resource
	version  string
}

func newItem(name string, r types.Resource) (item, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return item{}, fmt.Errorf("marshaling %s: %w", name, err)
	}
	sum := sha256.Sum256(b)
	return item{name: name, resource: r, version: hex.EncodeToString(sum[:16])}, nil
}

// newTypeSet builds a set from a copy of items; its version is a hash of the names and content
// of its items, so it is the same for the same content and never empty (an empty set has a
// version too, which is what lets a client that starts with version "" receive an empty state).
func newTypeSet(items map[string]item) *typeSet {
	sorted := make([]item, 0, len(items))
	for _, it := range items {
		sorted = append(sorted, it)
	}
	slices.SortFunc(sorted, func(a, b item) int { return cmp.Compare(a.name, b.name) })
	h := sha256.New()
	for _, it := range sorted {
		h.Write([]byte(it.name))
		h.Write([]byte{0})
		h.Write([]byte(it.version))
		h.Write([]byte{0})
	}
	return &typeSet{items: maps.Clone(items), version: hex.EncodeToString(h.Sum(nil)[:16])}
}

// newVersionedSet builds a set from a copy of items with a given version. It is for the
// cluster-wide pod set, where hashing and sorting 100,000 names on every pod change would put
// tens of milliseconds on every change's path; its version is a generation number instead.
func newVersionedSet(items map[string]item, version string) *typeSet {
	return &typeSet{items: maps.Clone(items), version: version}
}

// Package snapshot turns the source's state into per-node views for go-control-plane's snapshot
// cache: a node agent sees its own node's pods, citadel sees every pod, and both see all service
// accounts and namespaces.
package snapshot

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
)

// Snapshot is one node's view. It implements cache.ResourceSnapshot, which is how the snapshot
// cache serves type URLs it does not know (cache.Snapshot only takes Envoy's own types).
// A Snapshot is immutable.
type Snapshot struct {
	sets map[string]*typeSet // by type URL
}

var _ cache.ResourceSnapshot = (*Snapshot)(nil)

func newSnapshot(pods, serviceAccounts, namespaces *typeSet) *Snapshot {
	return &Snapshot{sets: map[string]*typeSet{
		mcpclient.PodTypeURL:            pods,
		mcpclient.ServiceAccountTypeURL: serviceAccounts,
		mcpclient.NamespaceTypeURL:      namespaces,
	}}
}

// GetVersion returns the content hash of the type's resources in this view, or "" for a type
// mcp-sync does not serve.
func (s *Snapshot) GetVersion(typeURL string) string { return s.set(typeURL).version }

// GetResourcesAndTTL returns the type's resources by name. mcp-sync resources never expire.
func (s *Snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	return s.set(typeURL).withTTL
}

// GetResources returns the type's resources by name.
func (s *Snapshot) GetResources(typeURL string) map[string]types.Resource {
	return s.set(typeURL).resources
}

// ConstructVersionMap does nothing: per-resource versions are computed when the view is built.
func (s *Snapshot) ConstructVersionMap() error { return nil }

// GetVersionMap returns each resource's content hash, for delta streams.
func (s *Snapshot) GetVersionMap(typeURL string) map[string]string { return s.set(typeURL).versions }

var emptySet = &typeSet{}

func (s *Snapshot) set(typeURL string) *typeSet {
	if ts, ok := s.sets[typeURL]; ok {
		return ts
	}
	return emptySet
}

// sameAs reports whether every type has the same version in both snapshots.
func (s *Snapshot) sameAs(o *Snapshot) bool {
	for url, ts := range s.sets {
		if o.GetVersion(url) != ts.version {
			return false
		}
	}
	return len(s.sets) == len(o.sets)
}

// typeSet is the resources of one type in one view, with their versions.
type typeSet struct {
	version   string
	withTTL   map[string]types.ResourceWithTTL
	resources map[string]types.Resource
	versions  map[string]string
}

// item is one resource with its content hash, computed once per state and shared by every view
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

// newTypeSet builds a set; its version is a hash of the names and content of its items, so it is
// the same for the same content and never empty (an empty set has a version too, which is what
// lets a client that starts with version "" receive an empty state).
func newTypeSet(items []item) *typeSet {
	items = slices.Clone(items)
	slices.SortFunc(items, func(a, b item) int { return cmp.Compare(a.name, b.name) })
	ts := &typeSet{
		withTTL:   make(map[string]types.ResourceWithTTL, len(items)),
		resources: make(map[string]types.Resource, len(items)),
		versions:  make(map[string]string, len(items)),
	}
	h := sha256.New()
	for _, it := range items {
		h.Write([]byte(it.name))
		h.Write([]byte{0})
		h.Write([]byte(it.version))
		h.Write([]byte{0})
		ts.withTTL[it.name] = types.ResourceWithTTL{Resource: it.resource}
		ts.resources[it.name] = it.resource
		ts.versions[it.name] = it.version
	}
	ts.version = hex.EncodeToString(h.Sum(nil)[:16])
	return ts
}

// Package source delivers the cluster objects mcp-sync serves: Pods, ServiceAccounts, Namespaces
// and the Portcullis custom resources, from a directory of manifests or from the Kubernetes API.
package source

import (
	"context"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// State is the full current set of objects of a source; see inventory.State.
type State = inventory.State

// Update is a batch of changes; see inventory.Update.
type Update = inventory.Update

// Source watches where cluster objects live and reports what changed.
//
// Contract:
//   - Run blocks until ctx ends, then returns nil. It returns an error only when the source cannot
//     work at all (the manifest directory does not exist, the API server refuses it by RBAC); a
//     problem with part of the input is logged, counted, and worked around by keeping that
//     part's last good objects.
//   - sink is called from one goroutine at a time, never concurrently. The first call is a full
//     update that comes after the initial load is complete, so a receiver never serves a
//     half-read cluster. Later calls carry changes (or a full update) and come only when
//     something may have changed; a change that sets an object to the content it already has is
//     allowed (receivers compare content).
//   - The Update passed to sink belongs to the receiver; the source never modifies it afterwards.
//   - sink should return quickly: the source does not read further changes while it runs.
//   - Run is called at most once per Source.
type Source interface {
	Run(ctx context.Context, sink func(Update)) error
}

// fullStateSource adapts a source that reports whole states (the file source) to Source.
type fullStateSource struct {
	run func(ctx context.Context, sink func(State)) error
}

func (f fullStateSource) Run(ctx context.Context, sink func(Update)) error {
	return f.run(ctx, func(st State) { sink(st.Update()) })
}

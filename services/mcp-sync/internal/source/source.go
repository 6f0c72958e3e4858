// Package source delivers the cluster objects mcp-sync serves: Pods, ServiceAccounts and
// Namespaces, from a directory of manifests now and from the Kubernetes API later.
package source

import (
	"context"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// State is the full current set of objects of a source; see inventory.State.
type State = inventory.State

// Source watches where cluster objects live and reports the whole current state after every
// change.
//
// Contract:
//   - Run blocks until ctx ends, then returns nil. It returns an error only when the source cannot
//     work at all (e.g. the manifest directory does not exist at start); a problem with part of
//     the input is logged, counted, and worked around by keeping that part's last good objects.
//   - sink is called from one goroutine at a time, never concurrently, each time with the full
//     state (never a delta). The first call comes after the initial load is complete, so a
//     receiver never serves a half-read cluster. Later calls come only when the state changed.
//   - The State passed to sink belongs to the receiver; the source never modifies it afterwards.
//   - sink should return quickly: the source does not read further changes while it runs.
//   - Run is called at most once per Source.
type Source interface {
	Run(ctx context.Context, sink func(State)) error
}

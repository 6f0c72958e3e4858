package kms

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Backend names accepted by -backend.
const (
	BackendLocal = "local"
	BackendVault = "vault"
)

// Factory opens one backend. The factory carries the backend's own configuration (a closure over
// it), so that each backend keeps its own Config type instead of sharing a union of options.
type Factory func(ctx context.Context) (Backend, error)

// Registry maps backend names to factories; Open is the one place a backend is chosen by name.
//
// The table itself is built by the binary's wiring (app), not here: a backend package imports this
// package for Backend and the sentinel errors, so this package cannot import the backends back.
type Registry map[string]Factory

// Names lists the known backend names, sorted.
func (r Registry) Names() []string {
	names := make([]string, 0, len(r))
	for name := range r {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Open builds the named backend. An unknown name fails with the list of known ones, so a typo in
// -backend never falls back to a default CA.
func (r Registry) Open(ctx context.Context, name string) (Backend, error) {
	factory, ok := r[name]
	if !ok || factory == nil {
		return nil, fmt.Errorf("unknown kms backend %q (known backends: %s)", name, strings.Join(r.Names(), ", "))
	}
	b, err := factory(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening kms backend %q: %w", name, err)
	}
	return b, nil
}

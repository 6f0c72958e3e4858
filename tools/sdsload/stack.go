package sdsload

import (
	"context"
	"path/filepath"

	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// Node is the node every generated pod runs on.
const Node = "node-a"

// StartStack starts a one-node stack (binaries in binDir, state in dir) serving pods pods over
// serviceAccounts identities, all on Node. extra adds flags per binary.
func StartStack(ctx context.Context, binDir, dir string, pods, serviceAccounts int, extra map[string][]string) (*stack.Stack, []stack.Pod, error) {
	manifests := filepath.Join(dir, "manifests")
	ps, err := WriteManifests(manifests, Node, pods, serviceAccounts)
	if err != nil {
		return nil, nil, err
	}
	s, err := stack.Start(ctx, stack.Options{BinDir: binDir, Dir: dir, Manifests: manifests, Nodes: []string{Node}, Extra: extra})
	if err != nil {
		return nil, nil, err
	}
	return s, ps, nil
}

// RotationExtra are the flags the rotation scenario runs the stack with: re-issues after a CA
// activation happen at once (not spread over the stack's 2s), so that Settle is quickly over and
// the next measured bundle change does not overlap them.
var RotationExtra = map[string][]string{stack.NodeAgent: {"-rotate-jitter", "0s"}}

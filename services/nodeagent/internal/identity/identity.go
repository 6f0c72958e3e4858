// Package identity decides who is on the other end of the SDS socket: it verifies the workload
// token the caller presents and checks that the pod it is bound to runs on this node, according
// to mcp-sync. The SPIFFE ID it derives is the only identity a caller can get certificates for.
package identity

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// Sentinel errors; Authenticate wraps them with the reason.
var (
	ErrUnauthenticated = errors.New("workload not authenticated")
	ErrNotOnNode       = errors.New("workload does not run on this node")
)

// Pods is the agent's view of the pods on its node. Implementations are safe for concurrent use.
type Pods interface {
	Get(key string) (*mcpv1.Pod, bool)
	// Synced is closed once the first view has arrived.
	Synced() <-chan struct{}
}

// Verifier checks a workload token.
type Verifier interface {
	Verify(raw string) (workloadtoken.Workload, error)
}

// Caller is an authenticated workload.
type Caller struct {
	ID       spiffeid.ID
	Workload workloadtoken.Workload
	Token    string
}

// Authenticator turns a presented token into a Caller.
type Authenticator struct {
	Verifier    Verifier
	Pods        Pods
	NodeName    string
	TrustDomain spiffeid.TrustDomain
}

// Authenticate verifies token and matches it to a pod on this node. It waits for the first pod
// view from mcp-sync, bounded by ctx, so that a sidecar that starts before the agent is ready is
// answered once it is.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, fmt.Errorf("%w: no workload token (send %q metadata or node metadata %q)",
			ErrUnauthenticated, workloadtoken.GRPCMetadataKey, workloadtoken.NodeMetadataKey)
	}
	w, err := a.Verifier.Verify(token)
	if err != nil {
		return Caller{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	select {
	case <-a.Pods.Synced():
	case <-ctx.Done():
		return Caller{}, fmt.Errorf("waiting for the pod list from mcp-sync: %w", context.Cause(ctx))
	}
	pod, ok := a.Pods.Get(w.PodKey())
	switch {
	case !ok:
		return Caller{}, fmt.Errorf("%w: pod %s is not on node %s", ErrNotOnNode, w.PodKey(), a.NodeName)
	case pod.GetNodeName() != a.NodeName:
		// mcp-sync should send only this node's pods; do not rely on it.
		return Caller{}, fmt.Errorf("%w: pod %s runs on node %q, not %s", ErrNotOnNode, w.PodKey(), pod.GetNodeName(), a.NodeName)
	case pod.GetUid() != w.PodUID:
		return Caller{}, fmt.Errorf("%w: token is for pod uid %s, but pod %s on node %s has uid %s",
			ErrNotOnNode, w.PodUID, w.PodKey(), a.NodeName, pod.GetUid())
	case pod.GetServiceAccount() != w.ServiceAccount:
		return Caller{}, fmt.Errorf("%w: token is for service account %s, but pod %s runs as %s",
			ErrNotOnNode, w.ServiceAccount, w.PodKey(), pod.GetServiceAccount())
	}
	id, err := spiffeid.FromSegments(a.TrustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return Caller{}, fmt.Errorf("%w: deriving spiffe id: %w", ErrUnauthenticated, err)
	}
	return Caller{ID: id, Workload: w, Token: token}, nil
}

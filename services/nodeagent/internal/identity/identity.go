// Package identity decides who is on the other end of the agent's socket, and so which SPIFFE ID
// (the only identity it can get certificates for) the caller has. Three kinds of evidence exist:
//
//   - the per-pod socket: a caller on the socket the kubelet asked the agent's CSI driver to mount
//     into one pod is that pod;
//   - peer credentials: the kernel names the calling process (SO_PEERCRED), and its cgroup names
//     its pod (package peercred);
//   - a workload token the caller presents: a bearer credential, good for whoever holds it.
//
// Every kind ends in the same check: the pod must be one mcp-sync reports on this node, with the
// UID the evidence names, and its service account gives the SPIFFE ID.
package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// Sentinel errors; Authenticate wraps them with the reason.
var (
	ErrUnauthenticated = errors.New("workload not authenticated")
	ErrNotOnNode       = errors.New("workload does not run on this node")
	// ErrMismatch is evidence that disagrees with itself: a token for one pod presented by a
	// process of another. It is refused and logged as an attack.
	ErrMismatch = errors.New("workload evidence disagrees")
)

// Mode is how callers on the shared socket are identified (a per-pod socket always identifies
// its pod).
type Mode string

// Modes.
const (
	// ModeToken trusts the token alone: for hosts where workloads run in no pod cgroup (the dev
	// stack) and sidecars that always send a fresh token.
	ModeToken Mode = "token"
	// ModePeer trusts peer credentials alone; a token is not looked at.
	ModePeer Mode = "peer"
	// ModeTokenPeer requires peer credentials, and a token, if one is sent, must name the same
	// pod. It is the default: a bearer token copied to another pod on the node is worth nothing,
	// and a sidecar that cannot send one (MOSN) still gets its identity.
	ModeTokenPeer Mode = "token+peer"
)

// ParseMode validates a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeToken, ModePeer, ModeTokenPeer:
		return m, nil
	}
	return "", fmt.Errorf("unknown attestation mode %q (want %s, %s or %s)", s, ModeToken, ModePeer, ModeTokenPeer)
}

// Pods is the agent's view of the pods on its node. Implementations are safe for concurrent use.
type Pods interface {
	Get(key string) (*mcpv1.Pod, bool)
	Find(match func(*mcpv1.Pod) bool) (*mcpv1.Pod, bool)
	// Synced is closed once the first view has arrived.
	Synced() <-chan struct{}
}

// Verifier checks a workload token.
type Verifier interface {
	Verify(raw string) (workloadtoken.Workload, error)
}

// Peer is what the connection says about the caller, beside anything the caller sent.
type Peer struct {
	// SocketPod is the pod whose own socket the caller came in on; nil on the shared socket.
	SocketPod *attestedpod.Ref
	// PodUID and ContainerID are the calling process's pod and container, from its cgroup; PID
	// and UID are the kernel's. Err says why the process could not be resolved to a pod (it is
	// in none, it changed, or the connection carries no peer credentials).
	PID         int32
	UID         uint32
	PodUID      string
	ContainerID string
	Err         error
}

// Evidence is everything known of a caller.
type Evidence struct {
	Token string
	Peer  Peer
}

// Caller is an authenticated workload.
type Caller struct {
	ID       spiffeid.ID
	Workload workloadtoken.Workload
	// Token is the caller's verified token, "" if it sent none or the agent did not rely on it.
	Token string
	// Pod is set when the agent identified the pod itself (per-pod socket or peer credentials):
	// citadel then takes the agent's word for it, on its own node (libs/attestedpod).
	Pod *attestedpod.Ref
	// Via names the evidence that decided: "socket", "peer" or "token".
	Via string
}

// Authenticator turns evidence into a Caller.
type Authenticator struct {
	Mode        Mode
	Verifier    Verifier
	Pods        Pods
	NodeName    string
	TrustDomain spiffeid.TrustDomain
	Logger      *slog.Logger
}

// Authenticate identifies the caller and matches it to a pod on this node. It waits for the
// first pod view from mcp-sync, bounded by ctx, so that a sidecar that starts before the agent is
// ready is answered once it is.
func (a *Authenticator) Authenticate(ctx context.Context, ev Evidence) (Caller, error) {
	switch {
	case ev.Peer.SocketPod != nil:
		return a.byPod(ctx, ev, "socket", func() (*mcpv1.Pod, error) { return a.podByRef(*ev.Peer.SocketPod) })
	case a.Mode == ModeToken:
		return a.byToken(ctx, ev.Token)
	}
	if ev.Peer.Err != nil {
		return Caller{}, fmt.Errorf("%w: peer credentials: %w", ErrUnauthenticated, ev.Peer.Err)
	}
	if ev.Peer.PodUID == "" {
		return Caller{}, fmt.Errorf("%w: the connection carries no peer credentials", ErrUnauthenticated)
	}
	if a.Mode == ModePeer {
		ev.Token = "" // not looked at
	}
	return a.byPod(ctx, ev, "peer", func() (*mcpv1.Pod, error) { return a.podByUID(ev.Peer.PodUID) })
}

// byPod identifies the caller by the pod find names, cross-checking a token if one was sent.
func (a *Authenticator) byPod(ctx context.Context, ev Evidence, via string, find func() (*mcpv1.Pod, error)) (Caller, error) {
	if err := a.waitSynced(ctx); err != nil {
		return Caller{}, err
	}
	pod, err := find()
	if err != nil {
		return Caller{}, err
	}
	w := workloadtoken.Workload{Namespace: pod.GetNamespace(), PodName: pod.GetPodName(), PodUID: pod.GetUid(),
		ServiceAccount: pod.GetServiceAccount(), NodeName: pod.GetNodeName()}
	caller, err := a.caller(w)
	if err != nil {
		return Caller{}, err
	}
	caller.Pod = &attestedpod.Ref{Namespace: w.Namespace, Name: w.PodName, UID: w.PodUID}
	caller.Via = via
	if ev.Token != "" {
		tw, err := a.Verifier.Verify(ev.Token)
		if err != nil {
			return Caller{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
		}
		if tw.PodUID != w.PodUID || tw.PodKey() != w.PodKey() {
			err := fmt.Errorf("%w: the token is for %s, but the %s says the caller is %s", ErrMismatch, tw, describeVia(via), w)
			a.logger().Error("possible attack: a workload presented a token of another pod", "via", via, "pid", ev.Peer.PID,
				"uid", ev.Peer.UID, "token_pod", tw.PodKey(), "token_pod_uid", tw.PodUID, "caller_pod", w.PodKey(), "caller_pod_uid", w.PodUID)
			return Caller{}, err
		}
		caller.Token = ev.Token
	}
	return caller, nil
}

func describeVia(via string) string {
	if via == "socket" {
		return "per-pod socket"
	}
	return "kernel (peer credentials and cgroup)"
}

func (a *Authenticator) podByRef(ref attestedpod.Ref) (*mcpv1.Pod, error) {
	pod, ok := a.Pods.Get(ref.Key())
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: the per-pod socket's pod %s is not on node %s", ErrNotOnNode, ref.Key(), a.NodeName)
	case pod.GetUid() != ref.UID:
		return nil, fmt.Errorf("%w: the per-pod socket is for %s, but pod %s now has uid %s", ErrNotOnNode, ref, ref.Key(), pod.GetUid())
	case pod.GetNodeName() != a.NodeName:
		return nil, fmt.Errorf("%w: pod %s runs on node %q, not %s", ErrNotOnNode, ref.Key(), pod.GetNodeName(), a.NodeName)
	}
	return pod, nil
}

func (a *Authenticator) podByUID(uid string) (*mcpv1.Pod, error) {
	pod, ok := a.Pods.Find(func(p *mcpv1.Pod) bool { return p.GetUid() == uid })
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: the calling process is in the cgroup of pod uid %s, which mcp-sync does not report on node %s",
			ErrNotOnNode, uid, a.NodeName)
	case pod.GetNodeName() != a.NodeName:
		return nil, fmt.Errorf("%w: pod %s runs on node %q, not %s", ErrNotOnNode, pod.GetName(), pod.GetNodeName(), a.NodeName)
	}
	return pod, nil
}

// byToken verifies token and matches it to a pod on this node.
func (a *Authenticator) byToken(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, fmt.Errorf("%w: no workload token (send %q metadata or node metadata %q)",
			ErrUnauthenticated, workloadtoken.GRPCMetadataKey, workloadtoken.NodeMetadataKey)
	}
	w, err := a.Verifier.Verify(token)
	if err != nil {
		return Caller{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if err := a.waitSynced(ctx); err != nil {
		return Caller{}, err
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
	caller, err := a.caller(w)
	caller.Token, caller.Via = token, "token"
	return caller, err
}

func (a *Authenticator) caller(w workloadtoken.Workload) (Caller, error) {
	id, err := spiffeid.FromSegments(a.TrustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return Caller{}, fmt.Errorf("%w: deriving spiffe id of %s: %w", ErrUnauthenticated, w, err)
	}
	return Caller{ID: id, Workload: w}, nil
}

func (a *Authenticator) waitSynced(ctx context.Context) error {
	select {
	case <-a.Pods.Synced():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the pod list from mcp-sync: %w", context.Cause(ctx))
	}
}

func (a *Authenticator) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.Default()
	}
	return a.Logger
}

package issuer

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

func (i *Issuer) verifyToken(raw string) (workloadtoken.Workload, error) {
	if raw == "" {
		return workloadtoken.Workload{}, fmt.Errorf("%w: no workload token in %q metadata", ErrUnauthenticated, workloadtoken.GRPCMetadataKey)
	}
	w, err := i.cfg.Verifier.Verify(raw)
	if err != nil {
		return workloadtoken.Workload{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return w, nil
}

// checkPod proves that the token's bearer runs on the calling node: a node agent may only obtain
// identities for pods scheduled on its own node, so a compromised node cannot mint certificates
// for workloads elsewhere, and a token for a deleted or replaced pod (same name, new UID) is dead.
func (i *Issuer) checkPod(ctx context.Context, node string, w workloadtoken.Workload) error {
	if err := i.waitSynced(ctx); err != nil {
		return err
	}
	key := w.PodKey()
	pod, ok := i.cfg.Pods.Get(key)
	switch {
	case !ok:
		return fmt.Errorf("%w: pod %s does not exist (according to mcp-sync)", ErrForbidden, key)
	case pod.GetUid() != w.PodUID:
		return fmt.Errorf("%w: pod %s has uid %s, but the token is bound to uid %s", ErrForbidden, key, pod.GetUid(), w.PodUID)
	case pod.GetNodeName() != node:
		return fmt.Errorf("%w: pod %s runs on node %s, not on calling node %s", ErrForbidden, key, pod.GetNodeName(), node)
	case pod.GetServiceAccount() != w.ServiceAccount:
		return fmt.Errorf("%w: pod %s runs as service account %s, but the token is for service account %s",
			ErrForbidden, key, pod.GetServiceAccount(), w.ServiceAccount)
	}
	return nil
}

// waitSynced returns at once once the first pod list has arrived; before that (citadel just
// started) it waits a little rather than refusing requests that would succeed a moment later.
func (i *Issuer) waitSynced(ctx context.Context) error {
	synced := i.cfg.Pods.Synced()
	select {
	case <-synced:
		return nil
	default:
	}
	timer := i.cfg.Clock.NewTimer(i.cfg.SyncWait)
	defer timer.Stop()
	select {
	case <-synced:
		return nil
	case <-timer.C():
		return ErrPodsNotSynced
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrPodsNotSynced, ctx.Err())
	}
}

// authorizeAttestedPod admits a request the node agent makes for a pod it identified itself (by
// peer credentials or a per-pod socket; see libs/attestedpod): the pod must exist with that UID
// on the calling node, and its service account, as mcp-sync reports it, names the identity. The
// agent's own mTLS identity is the credential, so an agent only ever speaks for its own node.
func (i *Issuer) authorizeAttestedPod(ctx context.Context, node string, md *structpb.Struct) (spiffeid.ID, error) {
	ref, err := attestedpod.From(md)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if err := i.waitSynced(ctx); err != nil {
		return spiffeid.ID{}, err
	}
	pod, ok := i.cfg.Pods.Get(ref.Key())
	switch {
	case !ok:
		return spiffeid.ID{}, fmt.Errorf("%w: attested pod %s does not exist (according to mcp-sync)", ErrForbidden, ref.Key())
	case pod.GetUid() != ref.UID:
		return spiffeid.ID{}, fmt.Errorf("%w: pod %s has uid %s, but the agent attested uid %s", ErrForbidden, ref.Key(), pod.GetUid(), ref.UID)
	case pod.GetNodeName() != node:
		return spiffeid.ID{}, fmt.Errorf("%w: attested pod %s runs on node %s, not on calling node %s", ErrForbidden, ref.Key(), pod.GetNodeName(), node)
	case pod.GetServiceAccount() == "":
		return spiffeid.ID{}, fmt.Errorf("%w: pod %s has no service account", ErrForbidden, ref.Key())
	}
	id, err := spiffeid.FromSegments(i.cfg.TrustDomain, "ns", pod.GetNamespace(), "sa", pod.GetServiceAccount())
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %s has no valid spiffe id: %v", ErrForbidden, ref, err)
	}
	return id, nil
}

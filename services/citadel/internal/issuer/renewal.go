package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// authorizeRenewal admits a renewal without a workload token: the calling node agent proves it
// holds the key of a still valid certificate for the identity, and a pod running as that
// identity must still be scheduled on the calling node. The identity is the current
// certificate's, never anything the CSR asks for.
func (i *Issuer) authorizeRenewal(ctx context.Context, node string, proof *structpb.Struct, csrDER []byte) (spiffeid.ID, error) {
	roots, err := i.cfg.Roots(ctx)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: trust bundle: %w", ErrKMSUnavailable, err)
	}
	id, current, err := renewalproof.Verify(proof, csrDER, roots, i.cfg.Clock.Now())
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if err := i.checkRevocation(ctx, id, current); err != nil {
		return spiffeid.ID{}, err
	}
	ns, sa, ok := workloadOf(id, i.cfg.TrustDomain)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("%w: %s is not a workload identity of trust domain %s", ErrForbidden, id, i.cfg.TrustDomain)
	}
	if err := i.waitSynced(ctx); err != nil {
		return spiffeid.ID{}, err
	}
	if _, ok := i.cfg.Pods.Find(func(p *mcpv1.Pod) bool {
		return p.GetNodeName() == node && p.GetNamespace() == ns && p.GetServiceAccount() == sa
	}); !ok {
		return spiffeid.ID{}, fmt.Errorf("%w: no pod of %s runs on calling node %s any more", ErrForbidden, id, node)
	}
	return id, nil
}

// checkRevocation refuses a proof by a revoked certificate: whoever holds a revoked certificate's
// key (a leaked key is why one revokes) must not turn it into a fresh one; the pod's agent renews
// with its workload token instead. kms-adapter's state decides, never an event: until citadel has
// loaded it, no proof is granted (after a restart citadel would otherwise have forgotten every
// revocation), and the refusal is retryable.
func (i *Issuer) checkRevocation(ctx context.Context, id spiffeid.ID, current *x509.Certificate) error {
	if !i.waitClosed(ctx, i.cfg.Revocations.Loaded()) {
		return fmt.Errorf("%w: the revocation state is not loaded from kms-adapter yet; retry", ErrKMSUnavailable)
	}
	revoked, err := i.cfg.Revocations.Revoked(ctx, id, current)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %w", ErrKMSUnavailable, err)
	case revoked:
		return fmt.Errorf("%w: the certificate proving the renewal (serial %x) was revoked; renew with a workload token",
			ErrUnauthenticated, current.SerialNumber)
	}
	return nil
}

// waitClosed waits up to SyncWait (and ctx) for ch to be closed, and reports whether it was.
func (i *Issuer) waitClosed(ctx context.Context, ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
	}
	timer := i.cfg.Clock.NewTimer(i.cfg.SyncWait)
	defer timer.Stop()
	select {
	case <-ch:
		return true
	case <-timer.C():
	case <-ctx.Done():
	}
	return false
}

// workloadOf splits spiffe://<td>/ns/<ns>/sa/<sa>.
func workloadOf(id spiffeid.ID, td spiffeid.TrustDomain) (ns, sa string, ok bool) {
	if !id.MemberOf(td) {
		return "", "", false
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return "", "", false
	}
	return parts[1], parts[3], true
}

// countRefusal counts an authentication or authorization refusal.
func countRefusal(m *metrics.Metrics, err error) {
	switch {
	case errors.Is(err, ErrUnauthenticated):
		m.AuthenticationFailures.Inc()
	case errors.Is(err, ErrForbidden):
		m.AuthorizationFailures.Inc()
	}
}

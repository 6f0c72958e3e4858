// Package attest is citadel's node attestation: a node agent proves which node it runs on with the
// service-account token the kubelet projected into its pod, and receives its control-plane
// certificate spiffe://<td>/portcullis/nodeagent/<node> signed by the control-plane CA. It is
// Kubernetes' answer to "one certificate per node, nodes come and go": no per-node Secret exists.
//
// The decision, each step failing with its own sentinel error:
//
//  1. the token verifies against the cluster's token keys, issuer and the attest audience
//     (ErrUnauthenticated);
//  2. it belongs to the node agents' service account, and names the node its pod was scheduled
//     on (ErrForbidden);
//  3. in mcp-sync's view, that pod exists with the token's UID, on that node, under that service
//     account (ErrForbidden; ErrNotSynced before the first pod list);
//  4. the CSR parses and its signature verifies (ErrInvalidCSR); only its public key is used.
package attest

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// Sentinel errors, one per kind of refusal; the gRPC edge maps them to status codes.
var (
	ErrUnauthenticated = errors.New("attestation token rejected")
	ErrForbidden       = errors.New("node attestation refused")
	ErrNotSynced       = errors.New("pods not yet synced from mcp-sync")
	ErrInvalidCSR      = errors.New("invalid csr")
	ErrSigning         = errors.New("signing failed")
)

// Pods is the cluster's pod view; mcpclient.Pods satisfies it. Safe for concurrent use.
type Pods interface {
	Get(key string) (*mcpv1.Pod, bool)
	Synced() <-chan struct{}
}

// TokenVerifier checks projected service-account tokens for the attest audience. Its errors are
// shown to the caller, so they must not leak secrets.
type TokenVerifier interface {
	Verify(raw string) (workloadtoken.Workload, error)
}

// Signer is the control-plane CA; *CAFiles satisfies it. Sign cuts the validity at the CA's
// expiry.
type Signer interface {
	Sign(id spiffeid.ID, csr *x509.CertificateRequest, validity time.Duration) ([]*x509.Certificate, error)
}

// Config carries the attestor's dependencies and policy.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// ServiceAccount is "<namespace>/<name>" of the node agents' ServiceAccount.
	ServiceAccount string
	Verifier       TokenVerifier
	Pods           Pods
	CA             Signer
	TTL            time.Duration
}

// Attestor decides node attestations. It is safe for concurrent use.
type Attestor struct {
	cfg            Config
	namespace, san string
}

// New checks the config.
func New(cfg Config) (*Attestor, error) {
	ns, sa, ok := strings.Cut(cfg.ServiceAccount, "/")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return nil, fmt.Errorf("node agent service account %q: want <namespace>/<name>", cfg.ServiceAccount)
	}
	if cfg.Verifier == nil || cfg.Pods == nil || cfg.CA == nil || cfg.TrustDomain.IsZero() || cfg.TTL <= 0 {
		return nil, errors.New("attest: trust domain, verifier, pods, CA and a positive TTL are required")
	}
	return &Attestor{cfg: cfg, namespace: ns, san: sa}, nil
}

// Result is an issued node agent certificate.
type Result struct {
	ID    spiffeid.ID
	Node  string
	Chain []*x509.Certificate // leaf first
}

// Attest runs the decision for a token and a DER CSR.
func (a *Attestor) Attest(ctx context.Context, token string, csrDER []byte) (Result, error) {
	if token == "" {
		return Result{}, fmt.Errorf("%w: no token", ErrUnauthenticated)
	}
	w, err := a.cfg.Verifier.Verify(token)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if w.Namespace != a.namespace || w.ServiceAccount != a.san {
		return Result{}, fmt.Errorf("%w: token of service account %s/%s, only %s may attest as a node agent",
			ErrForbidden, w.Namespace, w.ServiceAccount, a.cfg.ServiceAccount)
	}
	if w.NodeName == "" {
		return Result{}, fmt.Errorf("%w: the token names no node (kubernetes.io.node claim; Kubernetes 1.30+ projects it)", ErrForbidden)
	}
	if err := a.checkPod(ctx, w); err != nil {
		return Result{}, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return Result{}, fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	id, err := servicetls.NodeAgentID(a.cfg.TrustDomain, w.NodeName)
	if err != nil {
		return Result{}, fmt.Errorf("%w: node name %q is not usable in a SPIFFE ID: %v", ErrForbidden, w.NodeName, err)
	}
	chain, err := a.cfg.CA.Sign(id, csr, a.cfg.TTL)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrSigning, err)
	}
	return Result{ID: id, Node: w.NodeName, Chain: chain}, nil
}

// checkPod proves the token's pod runs on the node the token names: a token of a deleted pod (or
// of a replaced one with the same name) is dead, and a node cannot be claimed by a pod elsewhere.
func (a *Attestor) checkPod(ctx context.Context, w workloadtoken.Workload) error {
	select {
	case <-a.cfg.Pods.Synced():
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotSynced, ctx.Err())
	default:
		return ErrNotSynced
	}
	key := w.PodKey()
	pod, ok := a.cfg.Pods.Get(key)
	switch {
	case !ok:
		return fmt.Errorf("%w: pod %s does not exist (according to mcp-sync)", ErrForbidden, key)
	case pod.GetUid() != w.PodUID:
		return fmt.Errorf("%w: pod %s has uid %s, but the token is bound to uid %s", ErrForbidden, key, pod.GetUid(), w.PodUID)
	case pod.GetNodeName() != w.NodeName:
		return fmt.Errorf("%w: pod %s runs on node %q, not on node %q that the token names", ErrForbidden, key, pod.GetNodeName(), w.NodeName)
	case pod.GetServiceAccount() != w.ServiceAccount:
		return fmt.Errorf("%w: pod %s runs as service account %s, not %s", ErrForbidden, key, pod.GetServiceAccount(), w.ServiceAccount)
	}
	return nil
}

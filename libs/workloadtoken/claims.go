// Package workloadtoken verifies (and, for the dev stack, issues) workload JWTs in the format of
// Kubernetes projected service-account tokens: the pod a token is bound to travels in the
// "kubernetes.io" claim, so the same verifier serves tokens from a real API server and from
// Portcullis' dev token issuer.
package workloadtoken

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// Sentinel errors; Verify wraps them with detail.
var (
	ErrMalformed   = errors.New("malformed workload token")
	ErrSignature   = errors.New("workload token signature does not verify")
	ErrExpired     = errors.New("workload token expired")
	ErrNotYetValid = errors.New("workload token not yet valid")
	ErrIssuer      = errors.New("workload token from an untrusted issuer")
	ErrAudience    = errors.New("workload token not for this audience")
	ErrNotBound    = errors.New("workload token not bound to a pod")
)

// Workload is what a verified token says about its bearer.
type Workload struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	// NodeName and NodeUID are the node the pod was scheduled on, when the token says so
	// (Kubernetes 1.30+ projected tokens carry it; node attestation needs it).
	NodeName string
	NodeUID  string
	Expiry   time.Time
}

// PodKey is the "<namespace>/<pod>" key of the bound pod.
func (w Workload) PodKey() string { return w.Namespace + "/" + w.PodName }

func (w Workload) String() string {
	return fmt.Sprintf("pod %s/%s (uid %s, service account %s)", w.Namespace, w.PodName, w.PodUID, w.ServiceAccount)
}

// claims mirrors the claims of a Kubernetes projected service-account token.
type claims struct {
	jwt.Claims
	Kubernetes kubernetesClaims `json:"kubernetes.io"`
}

type kubernetesClaims struct {
	Namespace      string `json:"namespace"`
	Pod            *ref   `json:"pod,omitempty"`
	Node           *ref   `json:"node,omitempty"`
	ServiceAccount ref    `json:"serviceaccount"`
}

type ref struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

func subject(namespace, serviceAccount string) string {
	return "system:serviceaccount:" + namespace + ":" + serviceAccount
}

// Where a caller presents its token.
const (
	// GRPCMetadataKey carries "Bearer <token>" in gRPC metadata (as istio-agent does towards istiod).
	GRPCMetadataKey = "authorization"
	// NodeMetadataKey carries the token in the xDS node metadata of the first SDS request, for
	// sidecars that cannot add gRPC metadata.
	NodeMetadataKey = "WORKLOAD_TOKEN"
)

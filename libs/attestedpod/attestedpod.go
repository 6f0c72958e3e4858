// Package attestedpod carries a node agent's statement "this pod, on my node, asks" to citadel,
// for callers the agent identified without a token: by peer credentials (the kernel's word on
// the calling process and its pod cgroup) or by the per-pod socket the kubelet asked the agent's
// CSI driver to mount into that pod.
//
// Citadel grants it on the strength of the node agent's own mTLS identity: the pod must exist
// with that UID, on the calling agent's node, and its service account gives the SPIFFE ID. An
// agent can therefore only ever speak for pods on its own node. That is no more than the agent
// could do already: it holds those pods' keys, and root on a node can read every projected token
// the kubelet writes there.
//
// The statement travels in the metadata Struct of Istio's IstioCertificateRequest, beside (never
// together with) a renewal proof.
package attestedpod

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// Key is the metadata key of the statement: "<namespace>/<pod name>/<pod uid>".
const Key = "portcullis.dev/attested-pod"

// ErrInvalid wraps every reason a statement is refused before the pod is looked up.
var ErrInvalid = errors.New("invalid attested pod")

// The shapes Kubernetes gives namespace and pod names.
var (
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Ref names one pod incarnation.
type Ref struct {
	Namespace string
	Name      string
	UID       string
}

// Key is the "<namespace>/<pod>" key of the pod, as mcp-sync names it.
func (r Ref) Key() string { return r.Namespace + "/" + r.Name }

func (r Ref) String() string { return fmt.Sprintf("pod %s/%s (uid %s)", r.Namespace, r.Name, r.UID) }

// Validate checks the shape of the names: DNS labels/subdomains as Kubernetes allows them, and a
// UID that is a UUID.
func (r Ref) Validate() error {
	if len(r.Namespace) > 63 || !dns1123Label.MatchString(r.Namespace) {
		return fmt.Errorf("%w: namespace %q is not a DNS-1123 label", ErrInvalid, r.Namespace)
	}
	if len(r.Name) > 253 || !dns1123Subdomain.MatchString(r.Name) {
		return fmt.Errorf("%w: pod name %q is not a DNS-1123 subdomain", ErrInvalid, r.Name)
	}
	if !isUUID(r.UID) {
		return fmt.Errorf("%w: pod uid %q is not a UUID", ErrInvalid, r.UID)
	}
	return nil
}

// Set adds the statement to md, which may be nil.
func Set(md *structpb.Struct, r Ref) *structpb.Struct {
	if md == nil {
		md = &structpb.Struct{}
	}
	if md.Fields == nil {
		md.Fields = map[string]*structpb.Value{}
	}
	md.Fields[Key] = structpb.NewStringValue(r.Namespace + "/" + r.Name + "/" + r.UID)
	return md
}

// Present reports whether md carries a statement, well-formed or not.
func Present(md *structpb.Struct) bool {
	_, ok := md.GetFields()[Key]
	return ok
}

// From reads and validates the statement in md.
func From(md *structpb.Struct) (Ref, error) {
	v, ok := md.GetFields()[Key]
	if !ok {
		return Ref{}, fmt.Errorf("%w: no %q metadata", ErrInvalid, Key)
	}
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return Ref{}, fmt.Errorf("%w: %q must be a string", ErrInvalid, Key)
	}
	parts := strings.Split(s.StringValue, "/")
	if len(parts) != 3 {
		return Ref{}, fmt.Errorf("%w: %q must be \"<namespace>/<pod>/<uid>\"", ErrInvalid, Key)
	}
	r := Ref{Namespace: parts[0], Name: parts[1], UID: parts[2]}
	return r, r.Validate()
}

// isUUID accepts the 8-4-4-4-12 hex form Kubernetes gives pod UIDs.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

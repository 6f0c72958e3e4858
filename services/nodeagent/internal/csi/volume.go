package csi

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// The volume context keys the kubelet sets for a CSIDriver with podInfoOnMount and
// tokenRequests (k8s.io/kubernetes pkg/volume/csi). The kubelet writes them over any
// volumeAttributes of the same name in the pod spec, so a pod cannot claim another pod's name.
const (
	attrPodName        = "csi.storage.k8s.io/pod.name"
	attrPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	attrPodUID         = "csi.storage.k8s.io/pod.uid"
	attrServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	attrTokens         = "csi.storage.k8s.io/serviceAccount.tokens"
	attrEphemeral      = "csi.storage.k8s.io/ephemeral"
	kubeletAttrPrefix  = "csi.storage.k8s.io/"
)

var (
	// RFC 1123 label (namespaces) and subdomain (pod and service account names), as Kubernetes
	// validates them.
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// The API server gives pods RFC 4122 UUIDs; static pods get 32 hex digits (a hash of the
	// manifest). The UID names a directory of ours, so nothing else is let through.
	podUID = regexp.MustCompile(`^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$`)
)

// serviceAccountToken is one entry of the kubelet's serviceAccount.tokens attribute.
type serviceAccountToken struct {
	Token string `json:"token"`
}

// podFromContext checks the kubelet's volume context and returns the pod it names, with the
// token for audience (if audience is set and the kubelet sent one).
func podFromContext(attrs map[string]string, audience string) (PodInfo, error) {
	var errs []error
	if attrs[attrEphemeral] != "true" {
		errs = append(errs, fmt.Errorf("%s is %q: only ephemeral inline volumes (pod.spec.volumes[].csi) are served, "+
			"and the CSIDriver must set podInfoOnMount: true", attrEphemeral, attrs[attrEphemeral]))
	}
	// The pod's own volumeAttributes are refused (this driver takes none, and a typo would
	// otherwise pass unnoticed); the kubelet's own keys that a later Kubernetes may add are not.
	var unknown []string
	for k := range attrs {
		if !strings.HasPrefix(k, kubeletAttrPrefix) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		errs = append(errs, fmt.Errorf("unknown volume attributes %q: this driver takes no volumeAttributes", unknown))
	}
	pod := PodInfo{
		Namespace:      attrs[attrPodNamespace],
		Name:           attrs[attrPodName],
		UID:            attrs[attrPodUID],
		ServiceAccount: attrs[attrServiceAccount],
	}
	errs = append(errs,
		checkName(attrPodNamespace, pod.Namespace, dnsLabel, 63),
		checkName(attrPodName, pod.Name, dnsSubdomain, 253),
		checkName(attrServiceAccount, pod.ServiceAccount, dnsSubdomain, 253))
	if !podUID.MatchString(pod.UID) {
		errs = append(errs, fmt.Errorf("%s %q is not a pod UID", attrPodUID, pod.UID))
	}
	if raw, ok := attrs[attrTokens]; ok {
		var tokens map[string]serviceAccountToken
		if err := json.Unmarshal([]byte(raw), &tokens); err != nil {
			// The error names a position, never the token.
			errs = append(errs, fmt.Errorf("%s is not a JSON map of audience to token: %w", attrTokens, err))
		} else if audience != "" {
			pod.Token = tokens[audience].Token
		}
	}
	if err := errors.Join(errs...); err != nil {
		return PodInfo{}, err
	}
	return pod, nil
}

func checkName(attr, v string, re *regexp.Regexp, maxLen int) error {
	if v == "" {
		return fmt.Errorf("%s is missing: the CSIDriver must set podInfoOnMount: true", attr)
	}
	if len(v) > maxLen || !re.MatchString(v) {
		return fmt.Errorf("%s %q is not a valid Kubernetes name", attr, v)
	}
	return nil
}

// checkPublish checks everything of a NodePublishVolume request but the volume context.
func checkPublish(req *csipb.NodePublishVolumeRequest) error {
	var errs []error
	if req.GetVolumeId() == "" {
		errs = append(errs, errors.New("volume_id is missing"))
	}
	errs = append(errs, checkTargetPath(req.GetTargetPath()))
	if !req.GetReadonly() {
		// With a read-write volume the kubelet would also relabel it for SELinux, which fails
		// on our read-only mount; and a pod has nothing to write next to its socket.
		errs = append(errs, errors.New("the volume must be read-only: set readOnly: true in the pod's volumes[].csi"))
	}
	capability := req.GetVolumeCapability()
	switch {
	case capability == nil:
		errs = append(errs, errors.New("volume_capability is missing"))
	case capability.GetMount() == nil:
		errs = append(errs, errors.New("only mount volumes are served, not block volumes"))
	}
	switch mode := capability.GetAccessMode().GetMode(); mode {
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	default:
		errs = append(errs, fmt.Errorf("access mode %s refused: a pod's socket is for one pod on one node", mode))
	}
	return errors.Join(errs...)
}

func checkTargetPath(p string) error {
	if p == "" {
		return errors.New("target_path is missing")
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("target_path %q is not a clean absolute path", p)
	}
	return nil
}

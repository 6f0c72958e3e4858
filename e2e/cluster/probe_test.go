package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// A probe is a workload pod running tools/cmd/sdsprobe: it gets its SVID over SDS from the node
// agent's socket (mounted from the node, as a sidecar would), serves mTLS with it, and answers
// the test on its pod IP.
type probe struct {
	ns, name string
	ip       string
	uid      string
}

// probeStatus is sdsprobe's GET /status.
type probeStatus struct {
	SPIFFEID     string   `json:"spiffe_id"`
	Serial       string   `json:"serial"`
	NotAfter     string   `json:"not_after"`
	BundleSHA256 []string `json:"bundle_sha256"`
	Updates      int      `json:"updates"`
	LastError    string   `json:"last_error"`

	// What the probe holds of its -names (KeySecrets, gateway certificates), on their own stream.
	Resources        map[string]resourceStatus `json:"resources"`
	ResourcesUpdates int                       `json:"resources_updates"`
	ResourcesStreams int                       `json:"resources_streams"`
	ResourcesError   string                    `json:"resources_error"`
}

// resourceStatus describes one of the probe's -names: a generic secret by the SHA-256 of each
// value, a certificate by serial and SANs, a validation context by its CAs' SHA-256.
type resourceStatus struct {
	Kind     string            `json:"kind"`
	SHA256   map[string]string `json:"sha256"`
	Serial   string            `json:"serial"`
	DNSNames []string          `json:"dns_names"`
	Chain    int               `json:"chain"`
	CASHA256 []string          `json:"ca_sha256"`
}

// handshake is sdsprobe's POST /handshake.
type handshake struct {
	OK           bool   `json:"ok"`
	PeerSPIFFEID string `json:"peer_spiffe_id"`
	Error        string `json:"error"`
}

// probeSpec describes a probe pod: its service account, the SDS resource it asks for, and where
// its token comes from (the kubelet's projection by default, or a Secret the test made).
type probeSpec struct {
	name, serviceAccount string
	namespace            string            // empty: appsNS
	resource             string            // empty: default
	tokenSecret          string            // empty: a projected token with the audience portcullis
	csi                  bool              // the socket from the agent's CSI driver (a socket of the pod's own), not the node's hostPath
	noToken              bool              // present no token: the agent must know the pod without one
	names                []string          // extra SDS resource names (sdsprobe -names)
	labels               map[string]string // besides app=sdsprobe
}

func startProbe(ctx context.Context, t *testing.T, c kubernetes.Interface, spec probeSpec) *probe {
	t.Helper()
	args := []string{"-socket=/run/portcullis/sds/socket", "-token-file=/run/portcullis/token/token"}
	if spec.noToken {
		args[1] = "-token-file="
	}
	if spec.resource != "" {
		args = append(args, "-resource="+spec.resource)
	}
	if len(spec.names) > 0 {
		args = append(args, "-names="+strings.Join(spec.names, ","))
	}
	labels := map[string]string{"app": "sdsprobe"}
	maps.Copy(labels, spec.labels)
	token := corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
		ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", Audience: "portcullis", ExpirationSeconds: ptr.To(int64(3600))},
	}}}}
	if spec.tokenSecret != "" {
		token = corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: spec.tokenSecret}}
	}
	ns := spec.namespace
	if ns == "" {
		ns = appsNS
	}
	hostPathType := corev1.HostPathDirectory
	sds := corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: socketDir, Type: &hostPathType}}
	if spec.csi {
		sds = corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: csiDriver, ReadOnly: ptr.To(true)}}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName:           spec.serviceAccount,
			AutomountServiceAccountToken: ptr.To(false),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr.To(int64(65532)), RunAsGroup: ptr.To(int64(65532)), RunAsNonRoot: ptr.To(true),
				SupplementalGroups: []int64{1337}, // the socket's group (nodeagent.socketGroup)
				SeccompProfile:     &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "sdsprobe", Image: image("sdsprobe"), ImagePullPolicy: corev1.PullNever, Args: args,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "sds", MountPath: "/run/portcullis/sds"},
					{Name: "token", MountPath: "/run/portcullis/token", ReadOnly: true},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "sds", VolumeSource: sds},
				{Name: "token", VolumeSource: token},
			},
		},
	}
	if spec.noToken { // no token volume at all
		pod.Spec.Volumes = pod.Spec.Volumes[:1]
		pod.Spec.Containers[0].VolumeMounts = pod.Spec.Containers[0].VolumeMounts[:1]
	}
	if _, err := c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating probe %s: %v", spec.name, err)
	}
	p := runningPod(ctx, t, c, ns, spec.name)
	return &probe{ns: ns, name: spec.name, ip: p.Status.PodIP, uid: string(p.UID)}
}

// tlsAddr is the probe's mTLS address, for another probe to dial.
func (p *probe) tlsAddr() string { return net.JoinHostPort(p.ip, "8443") }

var httpClient = &http.Client{Timeout: 10 * time.Second}

func (p *probe) status(ctx context.Context) (probeStatus, error) {
	var st probeStatus
	err := p.call(ctx, http.MethodGet, "/status", &st)
	return st, err
}

// handshakeWith makes this probe dial peer with mTLS.
func (p *probe) handshakeWith(ctx context.Context, peer *probe) (handshake, error) {
	var h handshake
	err := p.call(ctx, http.MethodPost, "/handshake?addr="+url.QueryEscape(peer.tlsAddr()), &h)
	return h, err
}

func (p *probe) call(ctx context.Context, method, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+net.JoinHostPort(p.ip, "8080")+path, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	return json.Unmarshal(b, into)
}

// waitSVID waits until the probe holds an SVID that satisfies ok, and returns its status.
func (p *probe) waitSVID(ctx context.Context, t *testing.T, timeout time.Duration, what string, ok func(probeStatus) error) probeStatus {
	t.Helper()
	var st probeStatus
	eventually(t, timeout, p.name+": "+what, func() error {
		var err error
		if st, err = p.status(ctx); err != nil {
			return err
		}
		return ok(st)
	})
	return st
}

// mutualHandshake makes each probe dial the other and checks the identities they saw.
func mutualHandshake(ctx context.Context, t *testing.T, a, b *probe, idA, idB string) {
	t.Helper()
	for _, pair := range []struct {
		from, to *probe
		want     string
	}{{a, b, idB}, {b, a, idA}} {
		h, err := pair.from.handshakeWith(ctx, pair.to)
		if err != nil {
			t.Fatalf("%s → %s: %v", pair.from.name, pair.to.name, err)
		}
		if !h.OK || h.PeerSPIFFEID != pair.want {
			t.Fatalf("%s → %s: ok=%v peer=%q error=%q, want peer %q", pair.from.name, pair.to.name, h.OK, h.PeerSPIFFEID, h.Error, pair.want)
		}
	}
}

package cluster_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// adminPorts are the components' /metrics ports.
var adminPorts = map[string]string{"kms-adapter": "15031", "mcp-sync": "15011", "citadel": "15014", "nodeagent": "15020"}

// idleMemory reads each component's resident memory from its own metrics once the workloads
// hold their certificates; the figures go to docs/benchmarks.md.
func idleMemory(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	pods, err := c.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, p := range pods.Items {
		name := p.Labels["app.kubernetes.io/name"]
		port, ok := adminPorts[name]
		if !ok || p.Status.PodIP == "" {
			continue
		}
		rss, err := residentBytes(ctx, net.JoinHostPort(p.Status.PodIP, port))
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		if rss <= 0 {
			t.Fatalf("%s: resident memory %v", p.Name, rss)
		}
		seen++
		t.Logf("idle RSS %-12s %-40s %6.1f MiB", name, p.Name, rss/(1<<20))
	}
	if seen != len(adminPorts)+1 { // citadel runs two replicas
		t.Fatalf("measured %d pods, want %d", seen, len(adminPorts)+1)
	}
}

func residentBytes(ctx context.Context, addr string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "process_resident_memory_bytes "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no process_resident_memory_bytes in %s/metrics (%v)", addr, sc.Err())
}

// authnTokenRequest asks the API server for a token bound to a pod, as the kubelet does.
type authnTokenRequest struct {
	pod string
	uid types.UID
}

func (r authnTokenRequest) request() *authnv1.TokenRequest {
	return &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:         []string{"portcullis"},
		ExpirationSeconds: ptr.To(int64(3600)),
		BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: r.pod, UID: r.uid},
	}}
}

func ghostUID(ctx context.Context, t *testing.T, c kubernetes.Interface) types.UID {
	t.Helper()
	p, err := c.CoreV1().Pods(appsNS).Get(ctx, "ghost", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.UID
}

// crdNames lists the Portcullis resources the API server still serves.
func crdNames(ctx context.Context, t *testing.T) []string {
	t.Helper()
	c := client(t)
	list, err := c.Discovery().ServerResourcesForGroupVersion("security.portcullis.dev/v1alpha1")
	if err != nil {
		t.Fatalf("the Portcullis API group: %v", err)
	}
	var out []string
	for _, r := range list.APIResources {
		out = append(out, r.Name+".security.portcullis.dev")
	}
	return out
}

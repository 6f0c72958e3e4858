package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/tools/kubetest"
)

const webKey = "key/shop/web-key"

var keySecretResource = schema.GroupVersionResource{Group: "security.portcullis.dev", Version: "v1alpha1", Resource: "keysecrets"}

// KeySecrets end to end on the real API server: mcp-sync watches the CR, the agent of the pod's
// node receives its node's view over MCP and serves it over SDS to the pods the selector picks.
func TestKubernetesKeySecrets(t *testing.T) {
	env := startKube(t)
	c, s := env.kube, env.stack
	// cart-0 runs on web-0's node, in its namespace, but the selector (app=web) does not pick it.
	createPod(t, c, "cart-0", "api", "node-a", map[string]string{"app": "cart"})
	// web-1 keeps web-key on node-a when web-0 is relabelled: the agent, not mcp-sync's per-node
	// filter, must then refuse web-0.
	createPod(t, c, "web-1", "web", "node-a", map[string]string{"app": "web"})
	webTok, webPod := podToken(t, c, "web-0")
	cartTok, cartPod := podToken(t, c, "cart-0")
	client, err := sdsclient.Dial(s.Socket("node-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	webCred, webNode := sdsclient.Credential{Token: webTok}, "sidecar~"+webPod.Key()

	t.Run("a selected pod gets the KeySecret over SDS", func(t *testing.T) {
		var got map[string]*tlsv3.Secret
		eventually(t, "web-0 to get "+webKey, func() bool {
			got, err = client.Fetch(ctx, webNode, webCred, webKey)
			return err == nil
		})
		if d := keyData(t, got[webKey]); string(d["token"]) != "secret" {
			t.Fatalf("%s data = %q", webKey, d)
		}
	})

	t.Run("an unselected pod on the same node is refused", func(t *testing.T) {
		var refusal error
		eventually(t, "cart-0 in node-a's view", func() bool {
			_, refusal = client.Fetch(ctx, "sidecar~"+cartPod.Key(), sdsclient.Credential{Token: cartTok}, webKey)
			return strings.Contains(fmt.Sprint(refusal), "selector")
		})
		if status.Code(refusal) != codes.PermissionDenied || !strings.Contains(refusal.Error(), "shop/cart-0") {
			t.Fatalf("refusal %v, want PermissionDenied naming the pod", refusal)
		}
		_, err := client.Fetch(ctx, webNode, webCred, "key/shop/no-such-key")
		if status.Code(err) != codes.NotFound {
			t.Fatalf("unknown KeySecret: %v, want NotFound", err)
		}
	})

	st, err := client.Open(ctx, webNode, webCred)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Request(true, webKey); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}

	t.Run("an edit reaches the open stream", func(t *testing.T) {
		// The figure of docs/benchmarks.md: 100 edits; -short runs 10.
		edits := 100
		if testing.Short() {
			edits = 10
		}
		lat := make([]time.Duration, 0, edits)
		for i := range edits {
			want := fmt.Sprintf("%s%d", materialMarker, i)
			start := time.Now()
			editKeySecret(t, c, "web-key", map[string]string{"token": want})
			for { // a push per edit; the loop only guards against an unrelated pod push
				got, err := st.Recv() // bounded by ctx
				if err != nil {
					t.Fatal(err)
				}
				if string(keyData(t, got[webKey])["token"]) == want {
					break
				}
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		p50, p99 := lat[len(lat)/2], lat[(len(lat)*99)/100]
		if len(lat) < 100 {
			p99 = lat[len(lat)-1]
		}
		// The issue asks for under a second; asserting it would flake on a loaded machine, so the
		// figure is logged (docs/benchmarks.md) and the wait is bounded only by ctx.
		t.Logf("KeySecret edit in the API server -> push on the open SDS stream, %d edits: p50 %s, p99 %s, max %s",
			len(lat), p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
	})

	t.Run("relabelling the pod out of the selector takes the KeySecret away", func(t *testing.T) {
		setPodLabels(t, c, "web-0", map[string]string{"app": "web-retired"})
		got, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := got[webKey]; ok {
			t.Fatalf("the response after relabelling still holds %s", webKey)
		}
		_, err = client.Fetch(ctx, webNode, webCred, webKey)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "selector does not match") {
			t.Fatalf("fetch after relabelling: %v, want PermissionDenied", err)
		}
		// Back in the selector: the open stream gets it again.
		setPodLabels(t, c, "web-0", map[string]string{"app": "web"})
		if got, err = st.Recv(); err != nil {
			t.Fatal(err)
		}
		if got[webKey] == nil {
			t.Fatal("relabelled back, the stream did not get the KeySecret again")
		}
	})

	t.Run("deleting the KeySecret takes it away", func(t *testing.T) {
		if err := c.Dynamic.Resource(keySecretResource).Namespace("shop").Delete(ctx, "web-key", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := got[webKey]; ok {
			t.Fatal("the response after the delete still holds the KeySecret")
		}
		if _, err := client.Fetch(ctx, webNode, webCred, webKey); status.Code(err) != codes.NotFound {
			t.Fatalf("fetch after the delete: %v, want NotFound", err)
		}
	})

	t.Run("the material is in no file and no metric of the stack", func(t *testing.T) {
		// Every file the processes wrote: logs, the agents' state directories, certificates.
		dir := filepath.Dir(filepath.Dir(filepath.Dir(s.Socket("node-a"))))
		logs := 0
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(b, []byte(materialMarker)) {
				t.Errorf("%s holds KeySecret material", path)
			}
			if filepath.Ext(path) == ".log" {
				logs++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if logs < 4 {
			t.Fatalf("scanned %d log files under %s, want those of mcp-sync, citadel and both agents", logs, dir)
		}
		resp, err := http.Get("http://" + s.Agent("node-a").Addr("admin") + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("web-key")) || bytes.Contains(b, []byte(materialMarker)) {
			t.Error("the agent's metrics name the KeySecret or hold its data")
		}
		if !bytes.Contains(b, []byte(`resource="keysecret"`)) {
			t.Error(`the agent's metrics count no KeySecret pushes (resource="keysecret")`)
		}
	})
}

// materialMarker starts every value the test writes into the KeySecret, to find it anywhere.
const materialMarker = "pc-keysecret-material-"

func keyData(t *testing.T, s *tlsv3.Secret) map[string][]byte {
	t.Helper()
	if s == nil {
		t.Fatal("KeySecret missing from the response")
	}
	d, err := sdsclient.Generic(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// editKeySecret replaces the data of a KeySecret of namespace shop (plain strings, encoded here).
func editKeySecret(t *testing.T, c *kubetest.Cluster, name string, data map[string]string) {
	t.Helper()
	r := c.Dynamic.Resource(keySecretResource).Namespace("shop")
	ks, err := r.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	enc := map[string]any{}
	for k, v := range data {
		enc[k] = base64.StdEncoding.EncodeToString([]byte(v))
	}
	if err := unstructured.SetNestedField(ks.Object, enc, "spec", "data"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Update(context.Background(), ks, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func setPodLabels(t *testing.T, c *kubetest.Cluster, name string, labels map[string]string) {
	t.Helper()
	p, err := c.Client.CoreV1().Pods("shop").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels = labels
	if _, err := c.Client.CoreV1().Pods("shop").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

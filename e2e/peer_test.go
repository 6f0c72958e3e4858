package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/tools/podcgroup"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// Pods of examples/cluster, by UID.
const (
	frontend0UID = "8b3e4c2a-5d6f-4e70-a182-2c3d4e5f6a01" // node-a, service account frontend
	cart0UID     = "8b3e4c2a-5d6f-4e70-a182-2c3d4e5f6a02" // node-a, service account cart
	frontend1UID = "8b3e4c2a-5d6f-4e70-a182-2c3d4e5f6a03" // node-b
)

// A sidecar that sends no token gets its pod's identity from the kernel's word: its peer
// credentials and its kubelet-style pod cgroup. The same process moved to another pod's cgroup
// is that pod, and nothing else; outside any pod it is nobody.
func TestPeerCredentialsIdentifySidecarsWithoutToken(t *testing.T) {
	cg := podcgroup.New(t)
	s, _ := startStackOpts(t, stack.Options{WorkloadAttestation: "token+peer",
		Extra: map[string][]string{stack.NodeAgent: {"-cgroup-root", cg.CgroupRoot()}}})
	child := startSidecarChild(t, s.Socket("node-a"))
	td := "spiffe://cluster.local"

	frontend, _ := cg.Pod(frontend0UID)
	cg.Move(child.pid(), frontend)
	first := child.do("fetch")
	if first.Error != "" || first.ID != td+"/ns/shop/sa/frontend" {
		t.Fatalf("in frontend-0's cgroup: %+v; want frontend's SVID", first)
	}

	cart, _ := cg.Pod(cart0UID)
	cg.Move(child.pid(), cart)
	if got := child.do("fetch"); got.Error != "" || got.ID != td+"/ns/shop/sa/cart" {
		t.Fatalf("moved to cart-0's cgroup: %+v; want cart's SVID", got)
	}

	for name, tc := range map[string]struct {
		dir        string
		code, text string
	}{
		"outside any pod":       {cg.Outside(), "Unauthenticated", "pod"},
		"in a pod of node-b":    {first2(cg.Pod(frontend1UID)), "PermissionDenied", "does not report on node node-a"},
		"in a pod nobody knows": {first2(cg.Pod("00000000-0000-4000-8000-000000000001")), "PermissionDenied", "does not report"},
	} {
		t.Run(name, func(t *testing.T) {
			cg.Move(child.pid(), tc.dir)
			got := child.do("fetch")
			if got.Code != tc.code || !strings.Contains(got.Error, tc.text) {
				t.Fatalf("fetch = %+v; want %s mentioning %q", got, tc.code, tc.text)
			}
		})
	}

	t.Run("a valid token does not stand in for peer credentials", func(t *testing.T) {
		// This test process runs in no pod; it holds frontend-0's token.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := sdsclient.Dial(s.Socket("node-a"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tok, err := s.Token(pod(t, "shop/frontend-0"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Fetch(ctx, "frontend-0", sdsclient.Credential{Token: tok}, "default")
		wantCode(t, err, codes.Unauthenticated, "pod")
	})
}

func first2(a, _ string) string { return a }

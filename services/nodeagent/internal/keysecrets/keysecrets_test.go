package keysecrets_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/keysecrets"
)

func TestMatchesLikeKubernetes(t *testing.T) {
	pod := &mcpv1.Pod{Labels: map[string]string{"app": "web", "tier": "front"}, PodIp: "10.0.0.7"}
	req := func(key, op string, values ...string) *mcpv1.LabelSelectorRequirement {
		return &mcpv1.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	for _, tc := range []struct {
		name string
		sel  *mcpv1.LabelSelector
		want bool
	}{
		{"nil selects nothing", nil, false},
		{"empty selects every pod", &mcpv1.LabelSelector{}, true},
		{"matchLabels", &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, true},
		{"matchLabels other value", &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "cart"}}, false},
		{"matchLabels missing key", &mcpv1.LabelSelector{MatchLabels: map[string]string{"zone": "a"}}, false},
		{"In", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("app", "In", "cart", "web")}}, true},
		{"In missing", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("zone", "In", "a")}}, false},
		{"NotIn", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("app", "NotIn", "web")}}, false},
		{"NotIn absent key", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("zone", "NotIn", "a")}}, true},
		{"Exists", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("tier", "Exists")}}, true},
		{"DoesNotExist", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("tier", "DoesNotExist")}}, false},
		{"unknown operator", &mcpv1.LabelSelector{MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("app", "Gt", "1")}}, false},
		{"pod IP pseudo-label", &mcpv1.LabelSelector{MatchLabels: map[string]string{keysecrets.PodIPLabel: "10.0.0.7"}}, true},
		{"pod IP other", &mcpv1.LabelSelector{MatchLabels: map[string]string{keysecrets.PodIPLabel: "10.0.0.8"}}, false},
		{"all must hold", &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "web"},
			MatchExpressions: []*mcpv1.LabelSelectorRequirement{req("tier", "In", "back")}}, false},
	} {
		if got := keysecrets.Matches(tc.sel, pod); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSize(t *testing.T) {
	ks := &mcpv1.KeySecret{Data: map[string][]byte{"a": make([]byte, 10), "bc": make([]byte, 5)}}
	if n := keysecrets.Size(ks); n != 18 {
		t.Errorf("Size = %d, want 18", n)
	}
}

// views are the two mcp-sync views the store reads, fed directly.
type views struct {
	keys *mcpclient.KeySecrets
	pods *mcpclient.Pods
}

func newViews(t *testing.T) (*views, *keysecrets.Store) {
	t.Helper()
	v := &views{keys: mcpclient.NewKeySecrets(), pods: mcpclient.NewPods()}
	return v, keysecrets.New(keysecrets.Config{KeySecrets: v.keys, Pods: v.pods, SyncWait: 50 * time.Millisecond})
}

func (v *views) set(t *testing.T, pods []*mcpv1.Pod, kss ...*mcpv1.KeySecret) {
	t.Helper()
	var pr, kr []*anypb.Any
	for _, p := range pods {
		a, err := anypb.New(p)
		if err != nil {
			t.Fatal(err)
		}
		pr = append(pr, a)
	}
	for _, ks := range kss {
		a, err := anypb.New(ks)
		if err != nil {
			t.Fatal(err)
		}
		kr = append(kr, a)
	}
	if err := v.pods.Apply(pr); err != nil {
		t.Fatal(err)
	}
	if err := v.keys.Apply(kr); err != nil {
		t.Fatal(err)
	}
}

func TestLookup(t *testing.T) {
	v, store := newViews(t)
	caller := identity.Caller{Workload: workloadtoken.Workload{Namespace: "shop", PodName: "web-1", PodUID: "uid-1"}}
	ctx := context.Background()

	if _, err := store.Lookup(ctx, caller, "shop/key"); !errors.Is(err, keysecrets.ErrNotFound) || !strings.Contains(err.Error(), "no KeySecret view") {
		t.Fatalf("before the first view: %v, want ErrNotFound saying the view has not arrived", err)
	}

	web := &mcpv1.Pod{Name: "shop/web-1", Namespace: "shop", PodName: "web-1", Uid: "uid-1", Labels: map[string]string{"app": "web"}}
	sel := &mcpv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	v.set(t, []*mcpv1.Pod{web},
		&mcpv1.KeySecret{Name: "shop/key", Namespace: "shop", Selector: sel, Data: map[string][]byte{"k": []byte("v")}},
		&mcpv1.KeySecret{Name: "other/key", Namespace: "other", Selector: sel, Data: map[string][]byte{"k": []byte("v")}})
	if ks, err := store.Lookup(ctx, caller, "shop/key"); err != nil || string(ks.GetData()["k"]) != "v" {
		t.Fatalf("selected pod: %v, %v", ks, err)
	}
	if _, err := store.Lookup(ctx, caller, "other/key"); !errors.Is(err, keysecrets.ErrForbidden) {
		t.Errorf("other namespace: %v, want ErrForbidden", err)
	}
	if _, err := store.Lookup(ctx, caller, "shop/nope"); !errors.Is(err, keysecrets.ErrNotFound) {
		t.Errorf("unknown: %v, want ErrNotFound", err)
	}
	// A token of an earlier pod of the same name (another UID) is not that pod.
	old := caller
	old.Workload.PodUID = "uid-0"
	if _, err := store.Lookup(ctx, old, "shop/key"); !errors.Is(err, keysecrets.ErrForbidden) {
		t.Errorf("other pod UID: %v, want ErrForbidden", err)
	}
}

func TestSubscribersHearOfBothViews(t *testing.T) {
	v, store := newViews(t)
	calls := make(chan struct{}, 10)
	cancel := store.SubscribeFunc(func() { calls <- struct{}{} })
	wait := func(what string) {
		t.Helper()
		select {
		case <-calls:
		case <-time.After(10 * time.Second):
			t.Fatalf("no notification after %s", what)
		}
	}
	if err := v.pods.Apply(nil); err != nil {
		t.Fatal(err)
	}
	wait("a pod view")
	if err := v.keys.Apply(nil); err != nil {
		t.Fatal(err)
	}
	wait("a KeySecret view")
	cancel()
	if err := v.keys.Apply(nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-calls:
		t.Fatal("notified after cancel")
	case <-time.After(50 * time.Millisecond): // a short look for a call that must not come
	}
}

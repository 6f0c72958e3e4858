package mcpclient_test

import (
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

func mustAny(t *testing.T, m *mcpv1.Pod) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	if a.GetTypeUrl() != mcpclient.PodTypeURL {
		t.Fatalf("type URL %q, want %q", a.GetTypeUrl(), mcpclient.PodTypeURL)
	}
	return a
}

func TestPodsApplyReplacesTheView(t *testing.T) {
	p := mcpclient.NewPods()
	changes := 0
	p.OnChange(func() { changes++ })
	select {
	case <-p.Synced():
		t.Fatal("synced before any state")
	default:
	}
	if err := p.Apply([]*anypb.Any{mustAny(t, pod("a")), mustAny(t, pod("b"))}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Synced():
	default:
		t.Fatal("not synced after the first state")
	}
	if err := p.Apply([]*anypb.Any{mustAny(t, pod("b"))}); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Get("shop/a"); ok {
		t.Error("shop/a survived a state without it")
	}
	if got, ok := p.Get("shop/b"); !ok || got.GetPodName() != "b" {
		t.Errorf("shop/b = %v, %v", got, ok)
	}
	if changes != 2 {
		t.Errorf("OnChange ran %d times, want 2", changes)
	}
}

func TestPodsRejectsOtherTypesAndKeepsTheState(t *testing.T) {
	p := mcpclient.NewPods()
	if err := p.Apply([]*anypb.Any{mustAny(t, pod("a"))}); err != nil {
		t.Fatal(err)
	}
	ns, err := anypb.New(&mcpv1.Namespace{Name: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply([]*anypb.Any{mustAny(t, pod("b")), ns}); err == nil {
		t.Fatal("Apply accepted a Namespace as a Pod")
	}
	if _, ok := p.Get("shop/a"); !ok || p.Len() != 1 {
		t.Errorf("a rejected update changed the view (len %d)", p.Len())
	}
}

package mcpclient_test

import (
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

func TestKeySecretsApplyReplacesTheView(t *testing.T) {
	k := mcpclient.NewKeySecrets()
	changes := 0
	k.OnChange(func() { changes++ })
	ks := func(name string) *anypb.Any {
		a, err := anypb.New(&mcpv1.KeySecret{Name: "shop/" + name, Namespace: "shop", KeySecretName: name,
			Data: map[string][]byte{"k": []byte("v")}})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if err := k.Apply([]*anypb.Any{ks("a"), ks("b")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.Synced():
	default:
		t.Fatal("not synced after the first state")
	}
	if err := k.Apply([]*anypb.Any{ks("b")}); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Get("shop/a"); ok || k.Len() != 1 {
		t.Errorf("shop/a survived a state without it (len %d)", k.Len())
	}
	if got, ok := k.Get("shop/b"); !ok || string(got.GetData()["k"]) != "v" {
		t.Errorf("shop/b = %v, %v", got, ok)
	}
	if err := k.Apply([]*anypb.Any{mustAny(t, pod("a"))}); err == nil {
		t.Error("Apply accepted a Pod as a KeySecret")
	}
	if changes != 2 {
		t.Errorf("OnChange ran %d times, want 2", changes)
	}
}

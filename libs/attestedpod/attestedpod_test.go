package attestedpod

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

const uid = "0f6c8a52-3b1e-4d7a-9c2f-5e8b1a6d4c3f"

func TestRoundTrip(t *testing.T) {
	want := Ref{Namespace: "shop", Name: "cart-7d9f-x2", UID: uid}
	md := Set(nil, want)
	if !Present(md) {
		t.Fatal("Present = false after Set")
	}
	got, err := From(md)
	if err != nil || got != want {
		t.Fatalf("From = %+v, %v; want %+v", got, err, want)
	}
	if got.Key() != "shop/cart-7d9f-x2" {
		t.Errorf("Key = %q", got.Key())
	}
}

func TestFromRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		md   *structpb.Struct
		want string
	}{
		"absent":         {&structpb.Struct{}, "no "},
		"not a string":   {&structpb.Struct{Fields: map[string]*structpb.Value{Key: structpb.NewNumberValue(1)}}, "must be a string"},
		"two parts":      {str("shop/cart"), "<namespace>/<pod>/<uid>"},
		"four parts":     {str("shop/cart/" + uid + "/x"), "<namespace>/<pod>/<uid>"},
		"bad namespace":  {str("Shop/cart/" + uid), "namespace \"Shop\""},
		"empty pod":      {str("shop//" + uid), "pod name \"\""},
		"path in pod":    {str("shop/../" + uid), "pod name \"..\""},
		"uid not uuid":   {str("shop/cart/not-a-uid"), "not a UUID"},
		"uid bad hex":    {str("shop/cart/0f6c8a52-3b1e-4d7a-9c2f-5e8b1a6d4c3g"), "not a UUID"},
		"long namespace": {str(strings.Repeat("a", 64) + "/cart/" + uid), "DNS-1123 label"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := From(tc.md)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("From = %v; want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

func str(s string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{Key: structpb.NewStringValue(s)}}
}

// FuzzFrom feeds From what a node agent (or anyone holding an agent's certificate) can send: an
// accepted statement is well-formed, names a valid pod, and survives a round trip.
func FuzzFrom(f *testing.F) {
	f.Add("shop/cart-0/" + uid)
	f.Add("shop/cart.v2/" + uid)
	f.Add("a/b/c")
	f.Add("//")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := From(str(s))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("From(%q) = %v, not ErrInvalid", s, err)
			}
			return
		}
		if r.Validate() != nil || strings.Contains(r.Namespace+r.Name+r.UID, "/") {
			t.Fatalf("From(%q) accepted %+v", s, r)
		}
		if back, err := From(Set(nil, r)); err != nil || back != r {
			t.Fatalf("round trip of %+v: %+v, %v", r, back, err)
		}
	})
}

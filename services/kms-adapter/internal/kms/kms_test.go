package kms_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
)

func TestParseCSRAcceptsAllowedKeys(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"P-256": kmstest.NewKey(t), "P-384": p384, "RSA-2048": rsa2048} {
		if _, err := kms.ParseCSR(kmstest.CSRDER(t, key)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseCSRRefusesBadInput(t *testing.T) {
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		der  []byte
		want string
	}{
		"empty":         {nil, "empty"},
		"garbage":       {[]byte("not a csr"), "asn1"},
		"bad signature": {kmstest.BadSignatureCSRDER(t), "signature"},
		"RSA-1024":      {kmstest.CSRDER(t, rsa1024), "RSA key of 1024 bits"},
	} {
		_, err := kms.ParseCSR(tc.der)
		if !errors.Is(err, kms.ErrInvalidCSR) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalidCSR saying %q", name, err, tc.want)
		}
	}
}

func TestCheckIdentity(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	if err := kms.CheckIdentity(spiffeid.RequireFromPath(td, "/ns/a/sa/b"), td); err != nil {
		t.Errorf("workload id refused: %v", err)
	}
	for name, id := range map[string]spiffeid.ID{
		"zero":    {},
		"foreign": spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("other.example"), "/ns/a/sa/b"),
		"bare":    spiffeid.RequireFromSegments(td),
	} {
		if err := kms.CheckIdentity(id, td); !errors.Is(err, kms.ErrInvalidIdentity) {
			t.Errorf("%s: err = %v, want ErrInvalidIdentity", name, err)
		}
	}
}

type nopBackend struct{ kms.Backend }

func TestRegistry(t *testing.T) {
	boom := errors.New("boom")
	r := kms.Registry{
		"local": func(context.Context) (kms.Backend, error) { return nopBackend{}, nil },
		"vault": func(context.Context) (kms.Backend, error) { return nil, boom },
	}
	if b, err := r.Open(t.Context(), "local"); err != nil || b == nil {
		t.Errorf("open local: %v, %v", b, err)
	}
	if _, err := r.Open(t.Context(), "vault"); !errors.Is(err, boom) || !strings.Contains(err.Error(), `"vault"`) {
		t.Errorf("failing factory: err = %v", err)
	}
	_, err := r.Open(t.Context(), "lcoal")
	if err == nil || !strings.Contains(err.Error(), `unknown kms backend "lcoal"`) || !strings.Contains(err.Error(), "local, vault") {
		t.Errorf("unknown name: err = %v, want one listing local, vault", err)
	}
}

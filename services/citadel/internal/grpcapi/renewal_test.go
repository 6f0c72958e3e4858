package grpcapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
)

// renew asks for a certificate for csr with a proof by currentKey over currentChain, and no token.
func renew(c authv1.IstioCertificateServiceClient, proof *structpb.Struct, csr string) (*authv1.IstioCertificateResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csr, Metadata: proof})
}

func TestRenewalWithoutTokenByProofOfCurrentKey(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	csr1, key1 := newCSR(t)
	first, err := createCert(h.nodeClient("node-a"), h.token(cartWorkload), csr1, 0)
	if err != nil {
		t.Fatal(err)
	}
	current := parseChain(t, first.GetCertChain())

	csr2, key2 := newCSR(t)
	block, _ := pem.Decode([]byte(csr2))
	proof, err := renewalproof.New(current, key1, block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := renew(h.nodeClient("node-a"), proof, csr2)
	if err != nil {
		t.Fatalf("renewal by proof refused: %v", err)
	}
	leaf := parseChain(t, resp.GetCertChain())[0]
	if got := leaf.URIs[0].String(); got != current[0].URIs[0].String() {
		t.Fatalf("renewed leaf names %s, want the current identity %s", got, current[0].URIs[0])
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key2.PublicKey) {
		t.Fatal("renewed leaf does not certify the new key")
	}

	t.Run("from a node that runs no such pod", func(t *testing.T) {
		_, err := renew(h.nodeClient("node-b"), proof, csr2)
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("signed by a key that is not the current certificate's", func(t *testing.T) {
		stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		forged, err := renewalproof.New(current, stranger, block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		_, err = renew(h.nodeClient("node-a"), forged, csr2)
		wantCode(t, err, codes.Unauthenticated)
	})
	t.Run("proof for another csr", func(t *testing.T) {
		csr3, _ := newCSR(t)
		_, err := renew(h.nodeClient("node-a"), proof, csr3)
		wantCode(t, err, codes.Unauthenticated)
	})
	t.Run("after the pod left the node", func(t *testing.T) {
		h.setPods()
		_, err := renew(h.nodeClient("node-a"), proof, csr2)
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("by a certificate issued before its identity was revoked", func(t *testing.T) {
		h.setPods(cartPod)
		id := spiffeid.RequireFromString(current[0].URIs[0].String())
		h.kms.SetRevocations(revocationState(1, revocation(id, current[0].NotBefore.Add(time.Second))))
		h.refreshRevocations()
		_, err := renew(h.nodeClient("node-a"), proof, csr2)
		wantCode(t, err, codes.Unauthenticated)
		// The agent's fallback, its workload token, still works: revocation replaces, it does
		// not lock the pod out.
		if _, err := createCert(h.nodeClient("node-a"), h.token(cartWorkload), csr2, 0); err != nil {
			t.Fatalf("token issuance after revocation: %v", err)
		}
	})
}

package sds_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/gatewaycerts"
)

// gatewayResource is an opted-in Secret as mcp-sync sends it, allowed to shop/web.
func gatewayResource(t *testing.T, serial int64) *anypb.Any {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "shop.example.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(k)
	a, err := anypb.New(&mcpv1.GatewayCertificate{Name: "shop/gw-tls", Namespace: "shop", SecretName: "gw-tls",
		CertificateChain:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		PrivateKey:             pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}),
		AllowedServiceAccounts: []string{"shop/web"}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A gateway certificate is served, beside the workload's own names, to an allowed service
// account only, and a rotation is pushed on the open stream (MOSN-style: one name per request).
func TestGatewayCertificateOverSDS(t *testing.T) {
	store := gatewaycerts.New(slog.New(slog.DiscardHandler))
	if err := store.Apply([]*anypb.Any{gatewayResource(t, 1)}); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, options{gateways: store})

	_, err := h.client.Fetch(testCtx(t), "sidecar~cart", h.cred(t, cart), "kubernetes://gw-tls")
	requireCode(t, err, codes.PermissionDenied)
	_, err = h.client.Fetch(testCtx(t), "sidecar~web", h.cred(t, web), "kubernetes://other")
	requireCode(t, err, codes.NotFound)

	stream, err := h.client.Open(testCtx(t), "router~web", h.cred(t, web))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Request(false, "kubernetes://gw-tls"); err != nil {
		t.Fatal(err)
	}
	got, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	serialOf := func(got map[string]*tlsv3.Secret) int64 {
		t.Helper()
		c, err := sdsclient.Certificate(got["kubernetes://gw-tls"])
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.Int64()
	}
	if s := serialOf(got); s != 1 {
		t.Fatalf("served serial %d, want 1", s)
	}
	if err := stream.Request(false, "default"); err != nil { // the workload's own certificate too
		t.Fatal(err)
	}
	if got, err = stream.Recv(); err != nil || got["default"] == nil || serialOf(got) != 1 {
		t.Fatalf("after asking for default too: %v, %v", got, err)
	}
	if err := store.Apply([]*anypb.Any{gatewayResource(t, 2)}); err != nil {
		t.Fatal(err)
	}
	if got, err = stream.Recv(); err != nil || serialOf(got) != 2 {
		t.Fatalf("after the rotation: %v, %v; want serial 2 pushed", got, err)
	}
}

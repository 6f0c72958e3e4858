package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// gatewayPKI issues server certificates for a gateway Secret from one test CA.
type gatewayPKI struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
	serial int64
}

func newGatewayPKI(t testing.TB) *gatewayPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gateway test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return &gatewayPKI{ca: ca, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), serial: 100}
}

// issue returns a leaf for shop.example.com and its key, valid until notAfter, with a new serial.
func (p *gatewayPKI) issue(t testing.TB, notAfter time.Time) (crtPEM, keyPEM []byte, serial *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	serial = big.NewInt(p.serial)
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "shop.example.com"},
		DNSNames: []string{"shop.example.com"}, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), serial
}

func tlsSecret(name string, crt, key, ca []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: map[string]string{"portcullis.dev/gateway-certificate": "true"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key, "ca.crt": ca},
	}
}

// servedSerial decodes the leaf of a tls_certificate secret.
func servedSerial(t testing.TB, s *tlsv3.Secret) *big.Int {
	t.Helper()
	if s == nil {
		t.Fatal("no tls_certificate secret in the response")
	}
	cert, err := sdsclient.Certificate(s)
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf.SerialNumber
}

// TestGatewayCertificates runs the gateway certificate path on a real kube-apiserver (RBAC on,
// so the SubjectAccessReviews are real): an opted-in kubernetes.io/tls Secret reaches the
// gateway pod's agent only, is served over SDS as Istio names it, rotates on the open stream,
// and a broken edit keeps the last good one served.
func TestGatewayCertificates(t *testing.T) {
	env := startKube(t)
	c, s := env.kube, env.stack
	ctx := context.Background()
	apply(t, c, `
apiVersion: v1
kind: ServiceAccount
metadata: {name: gateway, namespace: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: gateway-certs, namespace: shop}
rules:
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [gw-tls]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: gateway-certs, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: gateway-certs}
subjects:
- {kind: ServiceAccount, name: gateway, namespace: shop}
`)
	createPod(t, c, "gw-0", "gateway", "node-a", map[string]string{"app": "gateway"})
	pki := newGatewayPKI(t)
	crt, key, serial := pki.issue(t, time.Now().Add(12*time.Hour))
	secrets := c.Client.CoreV1().Secrets("shop")
	if _, err := secrets.Create(ctx, tlsSecret("gw-tls", crt, key, pki.caPEM), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Not opted in: never watched, never served.
	other := tlsSecret("plain-tls", crt, key, pki.caPEM)
	other.Labels = nil
	if _, err := secrets.Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	viewA := watchAs(t, s, "node-a", mcpclient.GatewayCertificateTypeURL, func() *mcpv1.GatewayCertificate { return &mcpv1.GatewayCertificate{} })
	viewB := watchAs(t, s, "node-b", mcpclient.GatewayCertificateTypeURL, func() *mcpv1.GatewayCertificate { return &mcpv1.GatewayCertificate{} })
	gwTok, gw := podToken(t, c, "gw-0")
	gwCred := sdsclient.Credential{Token: gwTok}
	client, err := sdsclient.Dial(s.Socket("node-a"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	t.Run("the opted-in Secret reaches the gateway's node only, with its allowed service account", func(t *testing.T) {
		eventually(t, "node-a's gateway certificate", func() bool {
			gc, _ := viewA.get("shop/gw-tls").(*mcpv1.GatewayCertificate)
			return slices.Equal(gc.GetAllowedServiceAccounts(), []string{"shop/gateway"})
		})
		if got := viewA.names(); !slices.Equal(got, []string{"shop/gw-tls"}) {
			t.Fatalf("node-a received %v, want only the opted-in shop/gw-tls", got)
		}
		// node-b runs api-0 (service account api), which may not read the Secret.
		if got := viewB.names(); len(got) != 0 {
			t.Fatalf("node-b received gateway certificates %v", got)
		}
	})

	t.Run("a gateway pod gets its certificate and CA, under both of Istio's names", func(t *testing.T) {
		var got map[string]*tlsv3.Secret
		eventually(t, "the agent serving the certificate", func() bool {
			got, err = client.Fetch(ctx, "router~"+gw.Key(), gwCred, "kubernetes://gw-tls", "kubernetes://shop/gw-tls", "kubernetes://gw-tls-cacert")
			return err == nil
		})
		for _, n := range []string{"kubernetes://gw-tls", "kubernetes://shop/gw-tls"} {
			if sn := servedSerial(t, got[n]); sn.Cmp(serial) != 0 {
				t.Fatalf("%s: serial %s, want %s", n, sn, serial)
			}
		}
		roots, err := sdsclient.Roots(got["kubernetes://gw-tls-cacert"])
		if err != nil || len(roots) != 1 || !roots[0].Equal(pki.ca) {
			t.Fatalf("kubernetes://gw-tls-cacert: %v, %v; want the Secret's ca.crt", roots, err)
		}
	})

	t.Run("a pod whose service account may not read the Secret is refused", func(t *testing.T) {
		tok, p := podToken(t, c, "web-0") // node-a, service account web
		_, err := client.Fetch(ctx, "sidecar~"+p.Key(), sdsclient.Credential{Token: tok}, "kubernetes://gw-tls")
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("web-0 asking for kubernetes://gw-tls: %v, want PermissionDenied", err)
		}
		// On node-b, where no pod may read it, the agent does not even hold it.
		tokB, pB := podToken(t, c, "api-0")
		clientB, err := sdsclient.Dial(s.Socket("node-b"))
		if err != nil {
			t.Fatal(err)
		}
		defer clientB.Close()
		_, err = clientB.Fetch(ctx, "sidecar~"+pB.Key(), sdsclient.Credential{Token: tokB}, "kubernetes://shop/gw-tls")
		if status.Code(err) != codes.NotFound {
			t.Fatalf("api-0 on node-b asking for kubernetes://shop/gw-tls: %v, want NotFound", err)
		}
	})

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Open(sctx, "router~"+gw.Key(), gwCred)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Request(false, "kubernetes://gw-tls"); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	current := servedSerial(t, first["kubernetes://gw-tls"])
	update := func(t *testing.T, crt, key []byte) {
		t.Helper()
		sec, err := secrets.Get(ctx, "gw-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey] = crt, key
		if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// rotate edits the Secret and waits for the new certificate on the open stream.
	rotate := func(t *testing.T) time.Duration {
		t.Helper()
		crt, key, serial := pki.issue(t, time.Now().Add(12*time.Hour))
		start := time.Now()
		update(t, crt, key)
		got, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if sn := servedSerial(t, got["kubernetes://gw-tls"]); sn.Cmp(serial) != 0 {
			t.Fatalf("pushed serial %s, want %s", sn, serial)
		}
		current = serial
		return took
	}

	t.Run("rotating the Secret pushes the new certificate on the open stream", func(t *testing.T) {
		const edits = 100
		lat := make([]time.Duration, 0, edits)
		for range edits {
			lat = append(lat, rotate(t))
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		t.Logf("TLS Secret edit -> SDS push on the open stream, %d edits: p50 %s, p99 %s, max %s",
			edits, lat[edits/2], lat[edits*99/100-1], lat[edits-1])
	})

	t.Run("a bad Secret keeps the last good certificate served", func(t *testing.T) {
		good := current
		_, otherKey, _ := pki.issue(t, time.Now().Add(time.Hour))
		expired, expiredKey, _ := pki.issue(t, time.Now().Add(-time.Hour))
		for _, bad := range []struct {
			reason   string
			crt, key []byte
		}{
			{"GatewayCertificateBadPEM", []byte("not a certificate"), otherKey},
			{"GatewayCertificateKeyMismatch", crt, otherKey},
			{"GatewayCertificateExpired", expired, expiredKey},
		} {
			update(t, bad.crt, bad.key)
			// The Event says mcp-sync has seen and refused the edit.
			eventually(t, "a "+bad.reason+" event on the Secret", func() bool {
				evs, err := c.Client.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=gw-tls,reason=" + bad.reason})
				return err == nil && len(evs.Items) > 0
			})
			got, err := client.Fetch(ctx, "router~"+gw.Key(), gwCred, "kubernetes://gw-tls")
			if err != nil {
				t.Fatal(err)
			}
			if sn := servedSerial(t, got["kubernetes://gw-tls"]); sn.Cmp(good) != 0 {
				t.Fatalf("after a %s edit the agent serves serial %s, want the last good %s", bad.reason, sn, good)
			}
			reason := strings.TrimPrefix(bad.reason, "GatewayCertificate")
			if v := metric(t, s.Process(stack.MCPSync), `mcp_sync_gateway_certificates_rejected_total{reason="`+reason+`"}`); v != "1" {
				t.Errorf("rejected metric for %s = %s, want 1", reason, v)
			}
		}
		// The next good edit is the next push on the stream: nothing was pushed for the bad ones.
		rotate(t)
	})

	t.Run("a Secret that opts out is withdrawn from the node", func(t *testing.T) {
		sec, err := secrets.Get(ctx, "gw-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		delete(sec.Labels, "portcullis.dev/gateway-certificate")
		if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "node-a without the certificate", func() bool { return len(viewA.names()) == 0 })
	})
}

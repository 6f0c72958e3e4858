package cluster_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

var keySecrets = schema.GroupVersionResource{Group: "security.portcullis.dev", Version: "v1alpha1", Resource: "keysecrets"}

// The KeySecret of the step, the label that selects it, and its SDS name.
const (
	keySecretName  = "web-key"
	keySecretLabel = "portcullis.dev/test-keysecret"
	keySecretSDS   = "key/" + appsNS + "/" + keySecretName
)

// keySecretsOnCluster: a KeySecret CR reaches the probe its selector picks, over SDS, with its
// values; an unselected probe on the same node is refused; an edit and a relabelling reach the
// open stream.
func keySecretsOnCluster(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	dyn, err := dynamic.NewForConfig(cluster(t).Config())
	if err != nil {
		t.Fatal(err)
	}
	r := dyn.Resource(keySecrets).Namespace(appsNS)
	ks := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.portcullis.dev/v1alpha1", "kind": "KeySecret",
		"metadata": map[string]any{"name": keySecretName, "namespace": appsNS},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{keySecretLabel: "web"}},
			"data":     encodeData(map[string]string{"token": "t0ken-1", "hmac": "k3y-1"}),
		},
	}}
	if _, err := r.Create(ctx, ks, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web := startProbe(ctx, t, c, probeSpec{name: "ks-web", serviceAccount: "alpha",
		labels: map[string]string{keySecretLabel: "web"}, names: []string{keySecretSDS}})
	st := web.waitSVID(ctx, t, time.Minute, keySecretSDS, holdsKeySecret(map[string]string{"token": "t0ken-1", "hmac": "k3y-1"}))
	t.Logf("%s received %s with its values", web.name, keySecretSDS)

	// Same node, namespace and service account; not selected.
	other := startProbe(ctx, t, c, probeSpec{name: "ks-other", serviceAccount: "alpha",
		labels: map[string]string{keySecretLabel: "cart"}, names: []string{keySecretSDS}})
	ost := other.waitSVID(ctx, t, time.Minute, "its SVID and the refusal of "+keySecretSDS, func(st probeStatus) error {
		if !strings.Contains(st.ResourcesError, "PermissionDenied") || st.SPIFFEID != idAlpha {
			return fmt.Errorf("holds %q, names error %q, want %s and PermissionDenied", st.SPIFFEID, st.ResourcesError, idAlpha)
		}
		return nil
	})
	if len(ost.Resources) != 0 || ost.ResourcesUpdates != 0 {
		t.Fatalf("%s, not selected, was served %v", other.name, ost.Resources)
	}
	t.Logf("%s refused: %s", other.name, ost.ResourcesError)

	// An edit reaches the open stream.
	cur, err := r.Get(ctx, keySecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(cur.Object, encodeData(map[string]string{"token": "t0ken-2", "hmac": "k3y-1"}), "spec", "data"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := r.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	web.waitSVID(ctx, t, time.Minute, "the edited KeySecret", holdsKeySecret(map[string]string{"token": "t0ken-2", "hmac": "k3y-1"}))
	t.Logf("KeySecret edit → pushed on the open stream: within %v (polled every 250 ms)", time.Since(start).Round(time.Millisecond))
	st = sameStream(ctx, t, web, st)

	// Relabelled out of the selector: the next response on the same stream omits it.
	start = time.Now()
	patchLabel(ctx, t, c, web, keySecretLabel, "retired")
	web.waitSVID(ctx, t, time.Minute, keySecretSDS+" taken away", func(st probeStatus) error {
		if _, ok := st.Resources[keySecretSDS]; ok {
			return fmt.Errorf("still holds %s (names error %q)", keySecretSDS, st.ResourcesError)
		}
		return nil
	})
	t.Logf("relabelled out → %s taken away on the open stream: within %v", keySecretSDS, time.Since(start).Round(time.Millisecond))
	sameStream(ctx, t, web, st)
	deletePods(ctx, t, c, web, other)
}

func encodeData(data map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range data {
		out[k] = base64.StdEncoding.EncodeToString([]byte(v))
	}
	return out
}

func holdsKeySecret(want map[string]string) func(probeStatus) error {
	return func(st probeStatus) error {
		got := st.Resources[keySecretSDS]
		if got.Kind != "generic_secret" || len(got.SHA256) != len(want) {
			return fmt.Errorf("holds %+v (names error %q), want a generic_secret of %d keys", got, st.ResourcesError, len(want))
		}
		for k, v := range want {
			if got.SHA256[k] != sha256Hex([]byte(v)) {
				return fmt.Errorf("key %q has another value (names error %q)", k, st.ResourcesError)
			}
		}
		return nil
	}
}

// sameStream checks that the probe's names stream was not reopened since before: what it
// received came as a push on the stream it had.
func sameStream(ctx context.Context, t *testing.T, p *probe, before probeStatus) probeStatus {
	t.Helper()
	st, err := p.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ResourcesStreams != before.ResourcesStreams || st.ResourcesUpdates <= before.ResourcesUpdates || st.ResourcesError != "" {
		t.Fatalf("%s: %d streams, %d updates, error %q; before: %d streams, %d updates — want a push on the same stream",
			p.name, st.ResourcesStreams, st.ResourcesUpdates, st.ResourcesError, before.ResourcesStreams, before.ResourcesUpdates)
	}
	return st
}

func patchLabel(ctx context.Context, t *testing.T, c kubernetes.Interface, p *probe, key, value string) {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{key: value}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Pods(p.ns).Patch(ctx, p.name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// deletePods removes the step's probes, so that the refused ones stop retrying against the
// agent during the later steps.
func deletePods(ctx context.Context, t *testing.T, c kubernetes.Interface, ps ...*probe) {
	t.Helper()
	for _, p := range ps {
		if err := c.CoreV1().Pods(p.ns).Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
			t.Fatal(err)
		}
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// The gateway certificate of the step and its SDS names (Istio's).
const (
	gatewaySecret = "gw-tls"
	gatewayCert   = "kubernetes://" + gatewaySecret
	gatewayCA     = "kubernetes://" + gatewaySecret + "-cacert"
	gatewayHost   = "gw.apps.example"
)

// gatewayCertificateOnCluster: an opted-in kubernetes.io/tls Secret goes over SDS to the gateway
// probe whose service account may get it, is pushed again when rotated, and is refused to a
// probe whose service account may not.
func gatewayCertificateOnCluster(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	pki := newTestPKI(t)
	if _, err := c.CoreV1().ServiceAccounts(appsNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "gateway"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "gateway-certificate", Namespace: appsNS},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{gatewaySecret}, Verbs: []string{"get"}}}}
	if _, err := c.RbacV1().Roles(appsNS).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "gateway-certificate", Namespace: appsNS},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "gateway", Namespace: appsNS}}}
	if _, err := c.RbacV1().RoleBindings(appsNS).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	crt, key, serial := pki.issue(t)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: gatewaySecret, Namespace: appsNS, Labels: map[string]string{"portcullis.dev/gateway-certificate": "true"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key, "ca.crt": pki.caPEM},
	}
	if _, err := c.CoreV1().Secrets(appsNS).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	gw := startProbe(ctx, t, c, probeSpec{name: "gateway", serviceAccount: "gateway", names: []string{gatewayCert, gatewayCA}})
	st := gw.waitSVID(ctx, t, 2*time.Minute, gatewayCert+" and "+gatewayCA, holdsGatewayCert(serial, pki.caSHA256))
	t.Logf("gateway probe created → %s (serial %s) and %s: %v", gatewayCert, st.Resources[gatewayCert].Serial, gatewayCA, time.Since(start).Round(time.Millisecond))

	// Rotation: the Secret's new certificate is pushed on the open stream.
	crt, key, serial = pki.issue(t)
	secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey] = crt, key
	start = time.Now()
	if _, err := c.CoreV1().Secrets(appsNS).Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	gw.waitSVID(ctx, t, time.Minute, "the rotated certificate", holdsGatewayCert(serial, pki.caSHA256))
	t.Logf("Secret rotated → new certificate on the open stream: within %v (polled every 250 ms)", time.Since(start).Round(time.Millisecond))
	sameStream(ctx, t, gw, st)

	// gamma runs pods but may not get the Secret.
	stranger := startProbe(ctx, t, c, probeSpec{name: "gw-stranger", serviceAccount: "gamma", names: []string{gatewayCert}})
	sst := stranger.waitSVID(ctx, t, time.Minute, "the refusal of "+gatewayCert, func(st probeStatus) error {
		if !strings.Contains(st.ResourcesError, "PermissionDenied") {
			return fmt.Errorf("names error %q, want PermissionDenied", st.ResourcesError)
		}
		return nil
	})
	if len(sst.Resources) != 0 || sst.ResourcesUpdates != 0 {
		t.Fatalf("%s, whose service account may not get %s, was served %v", stranger.name, gatewaySecret, sst.Resources)
	}
	t.Logf("%s refused: %s", stranger.name, sst.ResourcesError)
	deletePods(ctx, t, c, gw, stranger)
}

func holdsGatewayCert(serial *big.Int, caSHA256 string) func(probeStatus) error {
	return func(st probeStatus) error {
		crt, ca := st.Resources[gatewayCert], st.Resources[gatewayCA]
		if crt.Kind != "tls_certificate" || crt.Serial != serial.Text(16) || !slices.Equal(crt.DNSNames, []string{gatewayHost}) || crt.Chain != 2 {
			return fmt.Errorf("%s: %+v, want serial %s for %s with its CA (names error %q)", gatewayCert, crt, serial.Text(16), gatewayHost, st.ResourcesError)
		}
		if ca.Kind != "validation_context" || !slices.Equal(ca.CASHA256, []string{caSHA256}) {
			return fmt.Errorf("%s: %+v, want the CA %s", gatewayCA, ca, caSHA256)
		}
		return nil
	}
}

// testPKI is the gateway's CA, made by the test.
type testPKI struct {
	ca       *x509.Certificate
	caKey    *ecdsa.PrivateKey
	caPEM    []byte
	caSHA256 string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: randomSerial(t), Subject: pkix.Name{CommonName: "gateway test CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), caSHA256: sha256Hex(der)}
}

// issue makes a serving certificate for gatewayHost: the chain (leaf, CA) and the key, in PEM.
func (p *testPKI) issue(t *testing.T) (chain, keyPEM []byte, serial *big.Int) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: randomSerial(t), Subject: pkix.Name{CommonName: gatewayHost}, DNSNames: []string{gatewayHost},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	chain = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), p.caPEM...)
	return chain, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), tmpl.SerialNumber
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func randomSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

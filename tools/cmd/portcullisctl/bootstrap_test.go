package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/tools/kubetest"
)

const (
	nobody   = "nobody"
	hookUser = "bootstrap-hook"
)

var testTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// env is a namespace of a shared API server, with the RBAC that the chart gives the hook.
type env struct {
	c  *kubetest.Cluster
	ns string
}

// TestBootstrap shares one API server (seconds to start) between its cases, one namespace each.
func TestBootstrap(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{Users: []string{nobody, hookUser}})
	for name, run := range map[string]func(*testing.T, env){
		"lifecycle": testLifecycle, "ca-rotation": testCARotation, "refusals": testRefusals, "delete": testDelete,
	} {
		t.Run(name, func(t *testing.T) { run(t, newEnv(t, c, "pc-"+name)) })
	}
}

func newEnv(t *testing.T, c *kubetest.Cluster, ns string) env {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// What the chart gives the hook Job's ServiceAccount (charts/portcullis/templates/bootstrap.yaml):
	// a Role in the release namespace only, and no access but create to objects it does not make.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "bootstrap"}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"secrets", "configmaps"}, Verbs: []string{"create"},
	}, {
		APIGroups: []string{""}, Resources: []string{"secrets", "configmaps"}, Verbs: []string{"get", "update", "delete"},
		ResourceNames: []string{"pc-control-plane-ca", "pc-citadel-tls", "pc-kms-adapter-tls", "pc-mcp-sync-tls", "pc-admin-tls"},
	}}}
	if _, err := c.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "bootstrap"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "bootstrap"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: hookUser}}}
	if _, err := c.Client.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return env{c: c, ns: ns}
}

// bootstrapAs runs the command as user through -kubeconfig, as the CLI would.
func (e env) bootstrapAs(t *testing.T, user string, extra ...string) (string, error) {
	t.Helper()
	kubeconfig, err := e.c.Kubeconfig(user)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	args := append([]string{"-kubeconfig", kubeconfig, "-namespace", e.ns, "-name-prefix", "pc"}, extra...)
	err = runBootstrap(args, &out)
	return out.String(), err
}

// snapshot maps every bootstrap object to its resourceVersion.
func (e env) snapshot(t *testing.T) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, name := range []string{"pc-control-plane-ca", "pc-citadel-tls", "pc-kms-adapter-tls", "pc-mcp-sync-tls", "pc-admin-tls"} {
		got["secret/"+name] = e.secret(t, name).ResourceVersion
	}
	cm, err := e.c.Client.CoreV1().ConfigMaps(e.ns).Get(context.Background(), "pc-control-plane-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("configmap: %v", err)
	}
	got["configmap/pc-control-plane-ca"] = cm.ResourceVersion
	return got
}

func (e env) secret(t *testing.T, name string) *corev1.Secret {
	t.Helper()
	s, err := e.c.Client.CoreV1().Secrets(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("secret %s: %v", name, err)
	}
	return s
}

func serviceSVID(t *testing.T, s *corev1.Secret) *x509svid.SVID {
	t.Helper()
	svid, err := x509svid.Parse(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		t.Fatalf("secret %s: %v", s.Name, err)
	}
	return svid
}

func testLifecycle(t *testing.T, e env) {
	ctx := context.Background()

	out, err := e.bootstrapAs(t, hookUser)
	if err != nil {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	if n := strings.Count(out, ": created"); n != 6 {
		t.Errorf("first run created %d objects, want 6:\n%s", n, out)
	}
	caSecret := e.secret(t, "pc-control-plane-ca")
	ca, err := servicetls.LoadBootstrapCA(testTD, caSecret.Data["tls.crt"], caSecret.Data["tls.key"])
	if err != nil || caSecret.Type != corev1.SecretTypeTLS {
		t.Fatalf("CA secret (%s): %v", caSecret.Type, err)
	}
	if life := time.Until(ca.Certificate().NotAfter); life < 8759*time.Hour || life > 8761*time.Hour {
		t.Errorf("CA lives %s, want -ca-validity 8760h", life)
	}
	cm, err := e.c.Client.CoreV1().ConfigMaps(e.ns).Get(ctx, "pc-control-plane-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["ca.crt"] != string(caSecret.Data["tls.crt"]) {
		t.Error("configmap ca.crt is not the CA certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	for _, svc := range bootstrapServices {
		s := e.secret(t, "pc-"+svc+"-tls")
		svid := serviceSVID(t, s)
		if want, _ := servicetls.ServiceID(testTD, svc); svid.ID != want || s.Type != corev1.SecretTypeTLS {
			t.Errorf("secret %s: %s of type %s, want %s of type kubernetes.io/tls", s.Name, svid.ID, s.Type, want)
		}
		if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("secret %s does not chain to the CA: %v", s.Name, err)
		}
		if string(s.Data["ca.crt"]) != cm.Data["ca.crt"] {
			t.Errorf("secret %s: ca.crt differs from the bundle", s.Name)
		}
		if life := time.Until(svid.Certificates[0].NotAfter); life < 2159*time.Hour || life > 2161*time.Hour {
			t.Errorf("secret %s lives %s, want -cert-validity 2160h", s.Name, life)
		}
	}

	// Second run (helm upgrade): nothing changes.
	before := e.snapshot(t)
	out, err = e.bootstrapAs(t, hookUser)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if after := e.snapshot(t); !maps.Equal(before, after) || strings.Count(out, ": kept") != 6 {
		t.Fatalf("second run changed objects: %v -> %v\n%s", before, after, out)
	}

	// Later, with less than a third of the service certificates' life left: renewed, CA kept.
	b := &bootstrapper{client: e.c.Client, td: testTD, out: &bytes.Buffer{},
		cfg: bootstrapConfig{namespace: e.ns, prefix: "pc", caValidity: 8760 * time.Hour, certValidity: 2160 * time.Hour},
		now: func() time.Time { return time.Now().Add(1500 * time.Hour) }}
	oldCitadel := serviceSVID(t, e.secret(t, "pc-citadel-tls"))
	if err := b.run(ctx); err != nil {
		t.Fatalf("run near expiry: %v", err)
	}
	after := e.snapshot(t)
	if after["secret/pc-control-plane-ca"] != before["secret/pc-control-plane-ca"] || after["configmap/pc-control-plane-ca"] != before["configmap/pc-control-plane-ca"] {
		t.Error("the CA or its bundle changed on a renewal")
	}
	if report := b.out.(*bytes.Buffer).String(); strings.Count(report, ": renewed (") != 4 {
		t.Errorf("want 4 renewals:\n%s", report)
	}
	if newCitadel := serviceSVID(t, e.secret(t, "pc-citadel-tls")); newCitadel.Certificates[0].SerialNumber.Cmp(oldCitadel.Certificates[0].SerialNumber) == 0 {
		t.Error("citadel's certificate was not renewed")
	}
}

func (e env) bundleOf(t *testing.T) []*x509.Certificate {
	t.Helper()
	cm, err := e.c.Client.CoreV1().ConfigMaps(e.ns).Get(context.Background(), "pc-control-plane-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemcerts.Parse([]byte(cm.Data["ca.crt"]))
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range bootstrapServices {
		if got := string(e.secret(t, "pc-"+svc+"-tls").Data["ca.crt"]); got != cm.Data["ca.crt"] {
			t.Errorf("secret pc-%s-tls: ca.crt is not the bundle of the configmap", svc)
		}
	}
	return certs
}

func testCARotation(t *testing.T, e env) {
	ctx := context.Background()
	if out, err := e.bootstrapAs(t, hookUser); err != nil {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	if _, err := e.bootstrapAs(t, kubetest.AdminUser, "-ca-rotation", "activate"); err == nil || !strings.Contains(err.Error(), "run -ca-rotation=prepare first") {
		t.Fatalf("activate without prepare: %v", err)
	}
	oldCA := e.secret(t, "pc-control-plane-ca").Data["tls.crt"]
	oldCitadel := e.secret(t, "pc-citadel-tls").Data["tls.crt"]

	// The rotation steps are the operator's (activate deletes a Secret, which the hook may not).
	// prepare: a next CA, trusted everywhere; no certificate changes yet.
	out, err := e.bootstrapAs(t, kubetest.AdminUser, "-ca-rotation", "prepare")
	if err != nil {
		t.Fatalf("prepare: %v\n%s", err, out)
	}
	next := e.secret(t, "pc-control-plane-ca-next").Data["tls.crt"]
	if certs := e.bundleOf(t); len(certs) != 2 || string(pemcerts.Encode(certs[:1])) != string(oldCA) {
		t.Fatalf("bundle after prepare holds %d certificates, want the current CA first and the next one", len(certs))
	}
	if !bytes.Equal(e.secret(t, "pc-citadel-tls").Data["tls.crt"], oldCitadel) || strings.Count(out, "ca.crt updated") != 4 {
		t.Errorf("prepare must only add the next CA to the bundles:\n%s", out)
	}
	before := e.snapshot(t)
	if out, err := e.bootstrapAs(t, hookUser); err != nil || !maps.Equal(before, e.snapshot(t)) {
		t.Fatalf("a plain run during a prepared rotation changed objects (%v):\n%s", err, out)
	}

	// activate: the next CA signs; every service certificate is re-issued; the old CA stays trusted.
	out, err = e.bootstrapAs(t, kubetest.AdminUser, "-ca-rotation", "activate")
	if err != nil {
		t.Fatalf("activate: %v\n%s", err, out)
	}
	if got := e.secret(t, "pc-control-plane-ca").Data["tls.crt"]; !bytes.Equal(got, next) {
		t.Error("the CA secret does not hold the prepared CA")
	}
	if _, err := e.c.Client.CoreV1().Secrets(e.ns).Get(ctx, "pc-control-plane-ca-next", metav1.GetOptions{}); err == nil {
		t.Error("the next CA secret is still there after activate")
	}
	if strings.Count(out, "not valid under the current CA") != 4 {
		t.Errorf("want every service certificate renewed under the new CA:\n%s", out)
	}
	if certs := e.bundleOf(t); len(certs) != 2 || string(pemcerts.Encode(certs[:1])) != string(next) {
		t.Fatalf("bundle after activate holds %d certificates, want the new CA first and the old one", len(certs))
	}

	// retire: only the new CA is left.
	if out, err := e.bootstrapAs(t, kubetest.AdminUser, "-ca-rotation", "retire"); err != nil {
		t.Fatalf("retire: %v\n%s", err, out)
	}
	if certs := e.bundleOf(t); len(certs) != 1 || string(pemcerts.Encode(certs)) != string(next) {
		t.Fatalf("bundle after retire holds %d certificates, want the new CA only", len(certs))
	}
}

func testRefusals(t *testing.T, e env) {

	_, err := e.bootstrapAs(t, nobody)
	if err == nil || !strings.Contains(err.Error(), "refused by RBAC") || !strings.Contains(err.Error(), `namespace "`+e.ns+`"`) {
		t.Errorf("run without permissions: %v, want an RBAC refusal that says what to grant", err)
	}

	kubeconfig, err := e.c.Kubeconfig(kubetest.AdminUser)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = runBootstrap([]string{"-kubeconfig", kubeconfig, "-namespace", "does-not-exist"}, &out)
	if err == nil || !strings.Contains(err.Error(), `namespace "does-not-exist" does not exist`) {
		t.Errorf("run in a missing namespace: %v", err)
	}

	err = runBootstrap([]string{"-kubeconfig", kubeconfig}, &out)
	if err == nil || !strings.Contains(err.Error(), "-namespace is required") {
		t.Errorf("run without -namespace: %v", err)
	}

	// A CA Secret that does not hold a CA is never replaced.
	ctx := context.Background()
	broken := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "pc-control-plane-ca"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": []byte("garbage"), "tls.key": []byte("garbage")}}
	if _, err := e.c.Client.CoreV1().Secrets(e.ns).Create(ctx, broken, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = e.bootstrapAs(t, hookUser)
	if err == nil || !strings.Contains(err.Error(), "never replaces a CA") {
		t.Errorf("run with a broken CA secret: %v", err)
	}
}

func testDelete(t *testing.T, e env) {
	if out, err := e.bootstrapAs(t, hookUser); err != nil {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	out, err := e.bootstrapAs(t, hookUser, "-delete")
	if err != nil {
		t.Fatalf("-delete: %v\n%s", err, out)
	}
	if strings.Count(out, ": deleted") != 6 {
		t.Errorf("want 6 objects deleted:\n%s", out)
	}
	ctx := context.Background()
	secrets, err := e.c.Client.CoreV1().Secrets(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cms, err := e.c.Client.CoreV1().ConfigMaps(e.ns).List(ctx, metav1.ListOptions{LabelSelector: managedByKey + "=" + managedBy})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items)+len(cms.Items) != 0 {
		t.Errorf("%d secrets and %d configmaps left after -delete", len(secrets.Items), len(cms.Items))
	}
	// Again, on nothing: still fine (the hook may be retried).
	if out, err := e.bootstrapAs(t, hookUser, "-delete"); err != nil || strings.Count(out, ": absent") != 6 {
		t.Fatalf("-delete twice: %v\n%s", err, out)
	}
}

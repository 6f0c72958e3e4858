package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/portcullis-mesh/portcullis/libs/pemcerts"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

// bootstrapUsage introduces `portcullisctl bootstrap`, the chart's pre-install/pre-upgrade hook.
const bootstrapUsage = `portcullisctl bootstrap [flags]

Creates, or renews, the control-plane identities of a Portcullis install in its namespace:
  Secret    <prefix>-control-plane-ca   kubernetes.io/tls: the control-plane CA (only citadel mounts it)
  ConfigMap <prefix>-control-plane-ca   ca.crt: the CA bundle (public; node agents mount it)
  Secrets   <prefix>-{citadel,kms-adapter,mcp-sync,admin}-tls   kubernetes.io/tls + ca.crt
With -delete it removes them all (the chart's post-delete hook). Idempotent: what exists is kept; a service certificate is renewed when less than a third of its
life is left or when it was not signed by the current CA. The CA itself is never replaced.
`

// Kubernetes object names and keys.
const (
	caSuffix      = "-control-plane-ca"
	caBundleKey   = "ca.crt"
	managedByKey  = "app.kubernetes.io/managed-by"
	managedBy     = "portcullisctl-bootstrap"
	partOfKey     = "app.kubernetes.io/part-of"
	partOf        = "portcullis"
	renewFraction = 3 // renew when less than 1/renewFraction of the lifetime is left
)

// bootstrapServices get a Secret <prefix>-<service>-tls each. Node agents are not among them: they
// obtain their per-node certificates by node attestation (citadel -attest-listen).
var bootstrapServices = []string{servicetls.Citadel, servicetls.KMSAdapter, servicetls.MCPSync, servicetls.Admin}

type bootstrapConfig struct {
	namespace    string
	prefix       string
	trustDomain  string
	kubeconfig   string
	caValidity   time.Duration
	certValidity time.Duration
	timeout      time.Duration
	rotation     string // "", or a rotationStep
	remove       bool
}

func runBootstrap(args []string, out io.Writer) error {
	var c bootstrapConfig
	fs := flag.NewFlagSet("portcullisctl bootstrap", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), bootstrapUsage+"\nFlags:\n"); fs.PrintDefaults() }
	fs.StringVar(&c.namespace, "namespace", "", "namespace of the install (required)")
	fs.StringVar(&c.prefix, "name-prefix", "portcullis", "prefix of the objects' names (the release's fullname)")
	fs.StringVar(&c.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the control plane")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; empty: the in-cluster service account")
	fs.DurationVar(&c.caValidity, "ca-validity", 8760*time.Hour, "lifetime of a new control-plane CA")
	fs.DurationVar(&c.certValidity, "cert-validity", 2160*time.Hour, "lifetime of a new service certificate (cut at the CA's expiry)")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "bound on the whole run")
	fs.BoolVar(&c.remove, "delete", false, "delete every object the bootstrap makes, the CA included (the chart's post-delete hook)")
	fs.StringVar(&c.rotation, "ca-rotation", "", "operator step of a control-plane CA rotation: prepare, activate or retire (docs/control-plane-identity.md)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("bootstrap: unexpected arguments %q", fs.Args())
	}
	td, err := c.validate()
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return fmt.Errorf("bootstrap: kubernetes client config (in-cluster, or -kubeconfig): %w", err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	b := &bootstrapper{client: client, cfg: c, td: td, out: out, now: time.Now}
	return b.run(ctx)
}

func (c bootstrapConfig) validate() (spiffeid.TrustDomain, error) {
	var errs []error
	if c.namespace == "" {
		errs = append(errs, errors.New("-namespace is required"))
	}
	if c.prefix == "" {
		errs = append(errs, errors.New("-name-prefix must not be empty"))
	}
	td, err := spiffeid.TrustDomainFromString(c.trustDomain)
	if err != nil {
		errs = append(errs, fmt.Errorf("-trust-domain %q: %w", c.trustDomain, err))
	}
	switch c.rotation {
	case "", rotationPrepare, rotationActivate, rotationRetire:
	default:
		errs = append(errs, fmt.Errorf("-ca-rotation %q: want prepare, activate or retire", c.rotation))
	}
	if c.remove && c.rotation != "" {
		errs = append(errs, errors.New("-delete and -ca-rotation exclude each other"))
	}
	if c.certValidity < time.Hour || c.caValidity < c.certValidity {
		errs = append(errs, fmt.Errorf("-cert-validity (%s) must be at least 1h and at most -ca-validity (%s)", c.certValidity, c.caValidity))
	}
	return td, errors.Join(errs...)
}

type bootstrapper struct {
	client kubernetes.Interface
	cfg    bootstrapConfig
	td     spiffeid.TrustDomain
	out    io.Writer
	now    func() time.Time // renewal decisions; injectable for tests
}

func (b *bootstrapper) run(ctx context.Context) error {
	if b.cfg.remove {
		return b.deleteAll(ctx)
	}
	if b.cfg.rotation == rotationActivate {
		if err := b.activateNextCA(ctx); err != nil {
			return err
		}
	}
	ca, err := b.ensureCA(ctx)
	if err != nil {
		return err
	}
	trusted := []*x509.Certificate{ca.Certificate()}
	next, err := b.nextCA(ctx, b.cfg.rotation == rotationPrepare)
	if err != nil {
		return err
	}
	if next != nil {
		trusted = append(trusted, next.Certificate())
	}
	bundle, err := b.ensureBundle(ctx, trusted, b.cfg.rotation != rotationRetire)
	if err != nil {
		return err
	}
	for _, svc := range bootstrapServices {
		if err := b.ensureServiceSecret(ctx, ca, bundle, svc); err != nil {
			return err
		}
	}
	return nil
}

func (b *bootstrapper) report(format string, args ...any) { fmt.Fprintf(b.out, format+"\n", args...) }

// explain turns API errors into what an operator must do.
func (b *bootstrapper) explain(verb, kind, name string, err error) error {
	ns := b.cfg.namespace
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s %s %s/%s: refused by RBAC: grant the bootstrap's ServiceAccount get, create and update on secrets and configmaps in namespace %q: %w",
			verb, kind, ns, name, ns, err)
	case apierrors.IsNotFound(err) && verb == "create":
		return fmt.Errorf("create %s %s/%s: namespace %q does not exist: %w", kind, ns, name, ns, err)
	}
	return fmt.Errorf("%s %s %s/%s: %w", verb, kind, ns, name, err)
}

func (b *bootstrapper) labels() map[string]string {
	return map[string]string{managedByKey: managedBy, partOfKey: partOf}
}

// ensureCA loads the CA from its Secret, or creates it if there is none. An existing CA that does
// not load is an error, never a reason to make a new one: every certificate depends on it.
func (b *bootstrapper) ensureCA(ctx context.Context) (*servicetls.BootstrapCA, error) {
	name := b.cfg.prefix + caSuffix
	secrets := b.client.CoreV1().Secrets(b.cfg.namespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		ca, err := servicetls.LoadBootstrapCA(b.td, s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
		if err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w (fix or delete it by hand; bootstrap never replaces a CA)", b.cfg.namespace, name, err)
		}
		if left := ca.Certificate().NotAfter.Sub(b.now()); left < b.cfg.certValidity {
			b.report("WARNING: the control-plane CA expires in %s: plan its rotation (docs/control-plane-identity.md)", left.Round(time.Hour))
		}
		b.report("secret/%s: kept (CA expires %s)", name, ca.Certificate().NotAfter.UTC().Format(time.RFC3339))
		return ca, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, b.explain("get", "secret", name, err)
	}
	ca, err := b.createCA(ctx, name)
	if apierrors.IsAlreadyExists(err) {
		return b.ensureCA(ctx) // another run created it meanwhile: use that one
	}
	if err != nil {
		return nil, b.explain("create", "secret", name, err)
	}
	b.report("secret/%s: created (CA expires %s)", name, ca.Certificate().NotAfter.UTC().Format(time.RFC3339))
	return ca, nil
}

// createCA makes a new CA and stores it in Secret name; the API server's error is returned as is.
func (b *bootstrapper) createCA(ctx context.Context, name string) (*servicetls.BootstrapCA, error) {
	ca, err := servicetls.NewBootstrapCA(b.td, b.cfg.caValidity)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	_, err = b.client.CoreV1().Secrets(b.cfg.namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: b.labels()},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: ca.CertPEM(), corev1.TLSPrivateKeyKey: keyPEM},
	}, metav1.CreateOptions{})
	return ca, err
}

// ensureBundle makes the public ConfigMap hold the trusted CAs (the current one first, then a
// prepared next one). Other CAs already in it are kept while they are valid, unless keepOthers is
// false: after a CA rotation the old CA stays trusted until the retire step drops it.
func (b *bootstrapper) ensureBundle(ctx context.Context, trusted []*x509.Certificate, keepOthers bool) ([]byte, error) {
	name := b.cfg.prefix + caSuffix
	cms := b.client.CoreV1().ConfigMaps(b.cfg.namespace)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, b.explain("get", "configmap", name, err)
	}
	var kept []*x509.Certificate
	if err == nil && keepOthers {
		if certs, perr := pemcerts.Parse([]byte(cm.Data[caBundleKey])); perr == nil {
			for _, c := range certs {
				if b.now().Before(c.NotAfter) && !slices.ContainsFunc(trusted, c.Equal) {
					kept = append(kept, c)
				}
			}
		}
	}
	all := append(slices.Clone(trusted), kept...)
	bundle := pemcerts.Encode(all)
	if err != nil { // not found
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: b.labels()},
			Data:       map[string]string{caBundleKey: string(bundle)},
		}, metav1.CreateOptions{})
		if err != nil {
			return nil, b.explain("create", "configmap", name, err)
		}
		b.report("configmap/%s: created", name)
		return bundle, nil
	}
	if cm.Data[caBundleKey] == string(bundle) {
		b.report("configmap/%s: kept", name)
		return bundle, nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[caBundleKey] = string(bundle)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return nil, b.explain("update", "configmap", name, err)
	}
	b.report("configmap/%s: updated (%d CA certificates)", name, len(all))
	return bundle, nil
}

// ensureServiceSecret keeps, renews or creates <prefix>-<service>-tls.
func (b *bootstrapper) ensureServiceSecret(ctx context.Context, ca *servicetls.BootstrapCA, bundle []byte, service string) error {
	name := b.cfg.prefix + "-" + service + "-tls"
	id, err := servicetls.ServiceID(b.td, service)
	if err != nil {
		return err
	}
	secrets := b.client.CoreV1().Secrets(b.cfg.namespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return b.explain("get", "secret", name, err)
	}
	exists := err == nil
	var reason string
	if exists {
		reason = b.renewalReason(s, ca, id)
		if reason == "" && bytes.Equal(s.Data[caBundleKey], bundle) {
			b.report("secret/%s: kept", name)
			return nil
		}
	}
	want := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: b.labels()},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{caBundleKey: bundle},
	}
	if exists && reason == "" {
		// Only the bundle changed (a CA was added or dropped): keep the key and certificate.
		want.Data[corev1.TLSCertKey], want.Data[corev1.TLSPrivateKeyKey] = s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey]
	} else {
		certPEM, keyPEM, err := ca.IssuePEM(id, b.cfg.certValidity)
		if err != nil {
			return err
		}
		want.Data[corev1.TLSCertKey], want.Data[corev1.TLSPrivateKeyKey] = certPEM, keyPEM
	}
	if !exists {
		if _, err := secrets.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return b.explain("create", "secret", name, err)
		}
		b.report("secret/%s: created for %s", name, id)
		return nil
	}
	if s.Type != corev1.SecretTypeTLS {
		return fmt.Errorf("secret %s/%s has type %s, want %s: delete it and run bootstrap again", b.cfg.namespace, name, s.Type, corev1.SecretTypeTLS)
	}
	updated := s.DeepCopy()
	updated.Data = want.Data
	if updated.Labels == nil {
		updated.Labels = map[string]string{}
	}
	for k, v := range b.labels() {
		updated.Labels[k] = v
	}
	if _, err := secrets.Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return b.explain("update", "secret", name, err)
	}
	if reason == "" {
		b.report("secret/%s: ca.crt updated", name)
	} else {
		b.report("secret/%s: renewed (%s)", name, reason)
	}
	return nil
}

// renewalReason says why the Secret's certificate must be replaced, or "" if it is good.
func (b *bootstrapper) renewalReason(s *corev1.Secret, ca *servicetls.BootstrapCA, id spiffeid.ID) string {
	svid, err := x509svid.Parse(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return "unusable: " + err.Error()
	}
	if svid.ID != id {
		return fmt.Sprintf("names %s, want %s", svid.ID, id)
	}
	leaf := svid.Certificates[0]
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: b.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "not valid under the current CA: " + err.Error()
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if left := leaf.NotAfter.Sub(b.now()); left < life/renewFraction {
		return fmt.Sprintf("%s of %s left", left.Round(time.Minute), life.Round(time.Minute))
	}
	return ""
}

// deleteAll removes every object the bootstrap makes; absent ones are fine.
func (b *bootstrapper) deleteAll(ctx context.Context) error {
	secrets := b.client.CoreV1().Secrets(b.cfg.namespace)
	names := []string{b.cfg.prefix + caSuffix, b.cfg.prefix + nextCASuffix}
	for _, svc := range bootstrapServices {
		names = append(names, b.cfg.prefix+"-"+svc+"-tls")
	}
	for _, name := range names {
		err := secrets.Delete(ctx, name, metav1.DeleteOptions{})
		switch {
		case err == nil:
			b.report("secret/%s: deleted", name)
		case apierrors.IsNotFound(err):
			b.report("secret/%s: absent", name)
		case apierrors.IsForbidden(err) && name == b.cfg.prefix+nextCASuffix:
			b.report("secret/%s: not deleted (RBAC allows no access to it; it exists only during a CA rotation)", name)
		default:
			return b.explain("delete", "secret", name, err)
		}
	}
	name := b.cfg.prefix + caSuffix
	err := b.client.CoreV1().ConfigMaps(b.cfg.namespace).Delete(ctx, name, metav1.DeleteOptions{})
	switch {
	case err == nil:
		b.report("configmap/%s: deleted", name)
	case apierrors.IsNotFound(err):
		b.report("configmap/%s: absent", name)
	default:
		return b.explain("delete", "configmap", name, err)
	}
	return nil
}

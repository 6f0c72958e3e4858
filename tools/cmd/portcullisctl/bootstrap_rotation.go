package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

// A control-plane CA rotation in three operator steps, so that no handshake fails on the way:
//
//	prepare   make the next CA (Secret <prefix>-control-plane-ca-next) and add it to every bundle;
//	          certificates stay as they are. Wait until every pod sees the new bundle.
//	activate  the next CA becomes the CA; every service certificate is re-issued under it (the
//	          old CA stays in the bundles); citadel signs node agents with it from now on.
//	retire    once no certificate of the old CA is in use (the longest of -attest-ttl and the
//	          time pods need to pick up the renewed Secrets), drop the old CA from the bundles.
const (
	rotationPrepare  = "prepare"
	rotationActivate = "activate"
	rotationRetire   = "retire"
	nextCASuffix     = "-control-plane-ca-next"
)

// nextCA loads the prepared next CA; with create, it makes one if there is none. It returns nil
// when no rotation is prepared.
func (b *bootstrapper) nextCA(ctx context.Context, create bool) (*servicetls.BootstrapCA, error) {
	name := b.cfg.prefix + nextCASuffix
	secrets := b.client.CoreV1().Secrets(b.cfg.namespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		ca, err := servicetls.LoadBootstrapCA(b.td, s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
		if err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", b.cfg.namespace, name, err)
		}
		b.report("secret/%s: kept (next CA, prepared; activate with -ca-rotation=activate)", name)
		return ca, nil
	case apierrors.IsForbidden(err) && !create:
		// The chart's hook may read only the objects it always makes. A prepared next CA is
		// still in the ConfigMap's bundle, and ensureBundle keeps it there.
		return nil, nil
	case !apierrors.IsNotFound(err):
		return nil, b.explain("get", "secret", name, err)
	case !create:
		return nil, nil
	}
	ca, err := b.createCA(ctx, name)
	if err != nil {
		return nil, b.explain("create", "secret", name, err)
	}
	b.report("secret/%s: created (next CA, expires %s)", name, ca.Certificate().NotAfter.UTC().Format(time.RFC3339))
	return ca, nil
}

// activateNextCA moves the prepared next CA into the CA Secret (kept in place, so that citadel's
// volume sees the change) and deletes the next Secret.
func (b *bootstrapper) activateNextCA(ctx context.Context) error {
	secrets := b.client.CoreV1().Secrets(b.cfg.namespace)
	nextName, caName := b.cfg.prefix+nextCASuffix, b.cfg.prefix+caSuffix
	next, err := secrets.Get(ctx, nextName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("-ca-rotation=activate: no prepared CA (secret %s/%s); run -ca-rotation=prepare first", b.cfg.namespace, nextName)
	}
	if err != nil {
		return b.explain("get", "secret", nextName, err)
	}
	if _, err := servicetls.LoadBootstrapCA(b.td, next.Data[corev1.TLSCertKey], next.Data[corev1.TLSPrivateKeyKey]); err != nil {
		return fmt.Errorf("secret %s/%s: %w", b.cfg.namespace, nextName, err)
	}
	cur, err := secrets.Get(ctx, caName, metav1.GetOptions{})
	if err != nil {
		return b.explain("get", "secret", caName, err)
	}
	cur = cur.DeepCopy()
	cur.Data = map[string][]byte{corev1.TLSCertKey: next.Data[corev1.TLSCertKey], corev1.TLSPrivateKeyKey: next.Data[corev1.TLSPrivateKeyKey]}
	if _, err := secrets.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return b.explain("update", "secret", caName, err)
	}
	if err := secrets.Delete(ctx, nextName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return b.explain("delete", "secret", nextName, err)
	}
	b.report("secret/%s: activated the prepared CA; secret/%s deleted", caName, nextName)
	return nil
}

package expiry_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clocktesting "k8s.io/utils/clock/testing"

	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/expiry"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
)

type recorder struct {
	mu  sync.Mutex
	got []*eventsv1.CertificateExpiring
}

func (r *recorder) Publish(e *eventsv1.Event) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, e.GetCertificateExpiring())
	return uint64(len(r.got))
}

func TestAnnouncesOnceWithinLeadAndForgetsExpired(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	ca, err := local.New(local.Config{StateDir: filepath.Join(t.TempDir(), "kms"), TrustDomain: td, DefaultTTL: 24 * time.Hour,
		MaxTTL: 48 * time.Hour, RootTTL: 8760 * time.Hour, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	tr := expiry.Wrap(ca, expiry.Config{Announce: rec, Clock: clk, Lead: time.Hour})
	sign := func(path string, ttl time.Duration) *x509.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		csr, _ := x509.ParseCertificateRequest(der)
		chain, err := tr.Sign(context.Background(), kms.SignRequest{CSR: csr, ID: spiffeid.RequireFromPath(td, path), TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return chain[0]
	}
	web := sign("/ns/a/sa/web", 2*time.Hour)
	sign("/ns/a/sa/db", 10*time.Hour)

	tr.Sweep()
	if len(rec.got) != 0 {
		t.Fatalf("announced %d certificates with more than the lead left", len(rec.got))
	}
	clk.Step(61 * time.Minute) // web has < 1h left
	tr.Sweep()
	tr.Sweep()
	if len(rec.got) != 1 || rec.got[0].GetSpiffeId() != "spiffe://cluster.local/ns/a/sa/web" || rec.got[0].GetSerial() != web.SerialNumber.Text(16) {
		t.Fatalf("announced %v, want web's certificate once", rec.got)
	}
	// A renewal replaces the remembered certificate; an older one signed later does not.
	renewed := sign("/ns/a/sa/web", 5*time.Hour)
	clk.Step(4 * time.Hour)
	tr.Sweep()
	if len(rec.got) != 2 || rec.got[1].GetSerial() != renewed.SerialNumber.Text(16) {
		t.Fatalf("announced %v, want the renewed web certificate second", rec.got)
	}
	clk.Step(24 * time.Hour)
	tr.Sweep()
	if tr.Tracked() != 0 {
		t.Errorf("tracking %d identities after every certificate expired, want 0", tr.Tracked())
	}
}

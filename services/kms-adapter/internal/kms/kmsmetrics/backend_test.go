package kmsmetrics_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmsmetrics"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
)

var (
	td = spiffeid.RequireTrustDomainFromString("cluster.local")
	id = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
)

func TestCountsTimesAndExportsExpiry(t *testing.T) {
	ca, err := local.New(local.Config{StateDir: t.TempDir(), TrustDomain: td, DefaultTTL: time.Hour,
		MaxTTL: 24 * time.Hour, RootTTL: 100 * time.Hour, Clock: clock.RealClock{}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := kmsmetrics.Wrap(t.Context(), kmsmetrics.Config{Backend: ca, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.SigningChain(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Set from the signing chain before anything is signed.
	want := map[string]float64{
		kmsmetrics.IntermediateExpiryTimestampSeconds: float64(chain[0].NotAfter.Unix()),
		kmsmetrics.RootExpiryTimestampSeconds:         float64(chain[1].NotAfter.Unix()),
	}
	for name, v := range want {
		if got := value(t, reg, name, ""); got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}

	csr := kmstest.CSR(t, kmstest.CSRDER(t, kmstest.NewKey(t)))
	sign := func(req kms.SignRequest) {
		_, _ = b.Sign(t.Context(), req)
	}
	sign(kms.SignRequest{CSR: csr, ID: id})
	sign(kms.SignRequest{CSR: csr, ID: id})
	sign(kms.SignRequest{CSR: kmstest.BadSignatureCSR(t), ID: id})
	foreign := spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("evil.example"), "/x")
	sign(kms.SignRequest{CSR: csr, ID: foreign})

	for result, want := range map[string]float64{kmsmetrics.ResultOK: 2, kmsmetrics.ResultInvalid: 2, kmsmetrics.ResultError: 0} {
		if got := value(t, reg, kmsmetrics.SignTotal, result); got != want {
			t.Errorf("%s{result=%q} = %v, want %v", kmsmetrics.SignTotal, result, got, want)
		}
	}
	if got := value(t, reg, kmsmetrics.SignDurationSeconds, ""); got != 4 {
		t.Errorf("%s sample count = %v, want 4", kmsmetrics.SignDurationSeconds, got)
	}
}

// remote is a backend without a signing chain, like a Vault role that signs leaves itself.
type remote struct {
	chain []*x509.Certificate
	err   error
}

func (r remote) Sign(context.Context, kms.SignRequest) ([]*x509.Certificate, error) {
	return r.chain, r.err
}

func (r remote) TrustBundle(context.Context) (kms.Bundle, error) {
	return kms.Bundle{TrustDomain: td, Roots: r.chain[len(r.chain)-1:]}, nil
}

func TestBackendWithoutSigningChain(t *testing.T) {
	at := func(h int) *x509.Certificate { return &x509.Certificate{NotAfter: time.Unix(int64(h)*3600, 0)} }
	chain := []*x509.Certificate{at(1), at(10), at(100)}
	for _, failure := range []error{nil, fmt.Errorf("%w: sealed", kms.ErrUnavailable), errors.New("boom")} {
		reg := prometheus.NewRegistry()
		b, err := kmsmetrics.Wrap(t.Context(), kmsmetrics.Config{Backend: remote{chain, failure}, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		if got := value(t, reg, kmsmetrics.RootExpiryTimestampSeconds, ""); got != 100*3600 {
			t.Errorf("root expiry from the bundle = %v", got)
		}
		_, _ = b.Sign(t.Context(), kms.SignRequest{})
		wantInter, wantResult := 10*3600.0, kmsmetrics.ResultOK
		if failure != nil {
			wantInter, wantResult = 0, kmsmetrics.ResultError
		}
		if got := value(t, reg, kmsmetrics.IntermediateExpiryTimestampSeconds, ""); got != wantInter {
			t.Errorf("after sign (err %v): intermediate expiry = %v, want %v", failure, got, wantInter)
		}
		if got := value(t, reg, kmsmetrics.SignTotal, wantResult); got != 1 {
			t.Errorf("after sign (err %v): %s{result=%q} = %v, want 1", failure, kmsmetrics.SignTotal, wantResult, got)
		}
	}
}

// value reads a counter, gauge (result == "") or histogram sample count from reg.
func value(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if result != "" && !hasLabel(m, kmsmetrics.LabelResult, result) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("metric %s{result=%q} not found", name, result)
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

package trustbundle

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// fakeKMS stands in for kms-adapter's client here: this test is about the source's own logic
// (last good bundle, refresh on tick); the gRPC path is covered in grpcapi's tests.
type fakeKMS struct {
	mu    sync.Mutex
	roots [][]byte
	down  bool
	calls int
	fetch chan struct{}
}

func (f *fakeKMS) GetTrustBundle(context.Context, *kmsv1.GetTrustBundleRequest, ...grpc.CallOption) (*kmsv1.GetTrustBundleResponse, error) {
	f.mu.Lock()
	defer func() {
		f.mu.Unlock()
		if f.fetch != nil {
			f.fetch <- struct{}{}
		}
	}()
	f.calls++
	if f.down {
		return nil, status.Error(codes.Unavailable, "connection refused")
	}
	return &kmsv1.GetTrustBundleResponse{TrustDomain: "example.org", RootCertificates: f.roots}, nil
}

func (f *fakeKMS) set(down bool, roots ...[]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
	if roots != nil {
		f.roots = roots
	}
}

func root(t *testing.T, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"},
		NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestGetFetchesOnMissAndReportsEarliestExpiry(t *testing.T) {
	exp1, exp2 := time.Unix(2_000_000_000, 0), time.Unix(1_900_000_000, 0)
	kms := &fakeKMS{roots: [][]byte{root(t, exp1), root(t, exp2)}}
	var updated *Bundle
	s := New(Config{KMS: kms, Refresh: time.Minute, Clock: clocktesting.NewFakeClock(time.Now()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OnUpdate: func(b *Bundle) { updated = b }})
	b, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Roots) != 2 || !b.EarliestExpiry.Equal(exp2) || updated != b {
		t.Fatalf("bundle = %d roots, earliest expiry %v, updated %v", len(b.Roots), b.EarliestExpiry, updated == b)
	}
	if _, err := s.Get(context.Background()); err != nil || kms.calls != 1 {
		t.Fatalf("second Get: err %v, %d kms calls, want 1", err, kms.calls)
	}
}

func TestGetWithoutBundleAndKMSDown(t *testing.T) {
	kms := &fakeKMS{down: true}
	s := New(Config{KMS: kms, Refresh: time.Minute, Clock: clocktesting.NewFakeClock(time.Now()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := s.Get(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

func TestRunRefreshesAndKeepsLastGood(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	first, second := root(t, time.Unix(2_000_000_000, 0)), root(t, time.Unix(2_100_000_000, 0))
	kms := &fakeKMS{roots: [][]byte{first}, fetch: make(chan struct{})}
	s := New(Config{KMS: kms, Refresh: time.Minute, Clock: clk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	<-kms.fetch // initial fetch
	waitTicker(t, clk)
	kms.set(false, second)
	clk.Step(time.Minute)
	<-kms.fetch
	waitFor(t, func() bool { b := s.Current(); return b != nil && string(b.Roots[0]) == string(second) })

	kms.set(true)
	waitTicker(t, clk)
	clk.Step(time.Minute)
	<-kms.fetch
	if b, err := s.Get(ctx); err != nil || string(b.Roots[0]) != string(second) {
		t.Fatalf("after failed refresh: err %v, want the last good bundle", err)
	}
}

func waitTicker(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()
	waitFor(t, clk.HasWaiters)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

package gatewaycert_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/gatewaycert"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
	"github.com/portcullis-mesh/portcullis/tools/kubetest"
)

// benchSecrets is 10,000 TLS Secrets, or 1,000 under -short (`go tool task test` runs every
// benchmark once to see that it works, not to measure it); 1 in 100 opts in.
func benchSecrets() int {
	if testing.Short() {
		return 1_000
	}
	return 10_000
}

// recorder is the snapshot manager's stand-in: it keeps the published certificates.
type recorder struct {
	mu     sync.Mutex
	certs  map[string]*mcpv1.GatewayCertificate
	change chan struct{}
}

func (r *recorder) Apply(u inventory.Update) error {
	r.mu.Lock()
	for _, c := range u.Changes {
		if c.Object == nil {
			delete(r.certs, c.Name)
		} else {
			r.certs[c.Name] = c.Object.(*mcpv1.GatewayCertificate)
		}
	}
	r.mu.Unlock()
	select {
	case r.change <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) get(name string) (*mcpv1.GatewayCertificate, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.certs[name], len(r.certs)
}

// BenchmarkGatewaySecretsMemory: 10,000 kubernetes.io/tls Secrets in a real kube-apiserver, 100
// of them opted in. heap-MiB is the controller's Go heap once it has listed and published them;
// all-secrets-heap-MiB is what an informer without the label selector holds for the same
// Secrets, the cost the selector avoids. Each iteration edits one opted-in Secret and waits for
// its publication (API write, watch event, validation, publish).
func BenchmarkGatewaySecretsMemory(b *testing.B) {
	c := kubetest.Start(b, kubetest.Options{})
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	crt, key := benchPair(b, 1)
	n, optedIn := benchSecrets(), benchSecrets()/100
	createStart := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("tls-%05d", i)}, Type: corev1.SecretTypeTLS,
					Data: map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key}}
				if i%100 == 0 {
					s.Labels = map[string]string{gatewaycert.OptInLabel: "true"}
				}
				if _, err := c.Client.CoreV1().Secrets("shop").Create(ctx, s, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	createTime := time.Since(createStart)

	allHeap := unselectedInformerHeap(b, c)

	before := heap()
	rec := &recorder{certs: map[string]*mcpv1.GatewayCertificate{}, change: make(chan struct{}, 1)}
	reg := prometheus.NewRegistry()
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"reason"})
	reviews := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "reviews"}, []string{"result"})
	reg.MustRegister(rejected, reviews)
	ctl, err := gatewaycert.New(gatewaycert.Config{Client: c.Client, Snapshots: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Rejected: rejected, Reviews: reviews, ReviewTTL: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	ctl.ObservePods(inventory.Update{Full: true, Changes: []inventory.Change{{Kind: inventory.Pod, Name: "shop/gw-0",
		Object: &mcpv1.Pod{Name: "shop/gw-0", Namespace: "shop", PodName: "gw-0", NodeName: "node-a", ServiceAccount: "gateway"}}}})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	listStart := time.Now()
	go func() { done <- ctl.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	waitFor(b, rec, func() bool { _, got := rec.get(""); return got == optedIn })
	listTime := time.Since(listStart)
	heapMiB := float64(heap()-before) / (1 << 20)

	durations := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("tls-%05d", (i*100)%n)
		crt, key := benchPair(b, int64(i+2))
		t0 := time.Now()
		s, err := c.Client.CoreV1().Secrets("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey] = crt, key
		if _, err := c.Client.CoreV1().Secrets("shop").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		waitFor(b, rec, func() bool { gc, _ := rec.get("shop/" + name); return string(gc.GetCertificateChain()) == string(crt) })
		durations = append(durations, time.Since(t0))
	}
	b.StopTimer()
	b.ReportMetric(heapMiB, "heap-MiB")
	b.ReportMetric(allHeap, "all-secrets-heap-MiB")
	b.ReportMetric(createTime.Seconds(), "create-s")
	b.ReportMetric(listTime.Seconds(), "list-s")
	var total time.Duration
	for _, d := range durations {
		total += d
	}
	b.ReportMetric(float64(total.Microseconds())/float64(len(durations))/1000, "edit-to-publish-ms")
}

// unselectedInformerHeap is the heap of a plain Secret informer over the same Secrets.
func unselectedInformerHeap(b *testing.B, c *kubetest.Cluster) float64 {
	before := heap()
	factory := informers.NewSharedInformerFactory(c.Client, 0)
	inf := factory.Core().V1().Secrets().Informer()
	stop := make(chan struct{})
	factory.Start(stop)
	if !cache.WaitForCacheSync(stop, inf.HasSynced) {
		b.Fatal("informer did not sync")
	}
	mib := float64(heap()-before) / (1 << 20)
	runtime.KeepAlive(inf.GetStore().List())
	close(stop)
	factory.Shutdown()
	return mib
}

func waitFor(b testing.TB, rec *recorder, cond func() bool) {
	b.Helper()
	deadline := time.After(30 * time.Second)
	for !cond() {
		select {
		case <-rec.change:
		case <-deadline:
			b.Fatal("timed out waiting for the controller to publish")
		}
	}
}

func benchPair(b testing.TB, serial int64) (crtPEM, keyPEM []byte) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "shop.example.com"},
		DNSNames: []string{"shop.example.com"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		b.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

func heap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

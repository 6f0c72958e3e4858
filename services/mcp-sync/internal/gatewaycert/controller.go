package gatewaycert

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// Snapshots takes the gateway certificate changes (the snapshot manager). Apply is called from
// one goroutine at a time.
type Snapshots interface {
	Apply(u inventory.Update) error
}

// Config configures a Controller.
type Config struct {
	Client    kubernetes.Interface
	Snapshots Snapshots
	Logger    *slog.Logger
	// Rejected counts refused Secrets by reason; Reviews counts SubjectAccessReviews by result
	// ("allowed", "denied", "error"). Both required.
	Rejected *prometheus.CounterVec
	Reviews  *prometheus.CounterVec
	// ReviewTTL is how long a SubjectAccessReview answer is reused; every pair is asked again
	// after it, so a RoleBinding change takes effect within ReviewTTL.
	ReviewTTL time.Duration
	// Clock is the time source for expiry checks and ReviewTTL; nil means the real clock.
	Clock clock.WithTicker
}

// Controller watches the opted-in Secrets and publishes them as gateway certificates. Create it
// with New; ObservePods and Run may be called concurrently.
type Controller struct {
	cfg      Config
	recorder record.EventRecorder
	events   record.EventBroadcaster

	mu       sync.Mutex
	valid    map[string]*mcpv1.GatewayCertificate // last good version of each opted-in Secret
	accounts map[string]int                       // pods per service account "<ns>/<name>"
	podSA    map[string]string                    // pod -> its service account
	wake     chan struct{}
	// loaded is closed by the first full pod update: nothing is published before it, so that
	// the snapshot manager's first state comes from the source.
	loaded     chan struct{}
	loadedOnce sync.Once

	// Owned by Run's goroutine.
	reviews   map[reviewKey]review
	published map[string]*mcpv1.GatewayCertificate
}

type reviewKey struct{ account, secret string }

type review struct {
	allowed bool
	at      time.Time
}

// New checks cfg and returns a controller that has not contacted the API server yet.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Snapshots == nil || cfg.Logger == nil || cfg.Rejected == nil || cfg.Reviews == nil {
		return nil, errors.New("gateway certificate controller needs a client, snapshots, logger and metrics")
	}
	if cfg.ReviewTTL <= 0 {
		return nil, fmt.Errorf("review TTL must be positive, got %s", cfg.ReviewTTL)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	cfg.Logger = cfg.Logger.With("component", "gateway-certificates")
	events := record.NewBroadcaster()
	return &Controller{
		cfg:       cfg,
		events:    events,
		recorder:  events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "portcullis-mcp-sync"}),
		valid:     map[string]*mcpv1.GatewayCertificate{},
		accounts:  map[string]int{},
		podSA:     map[string]string{},
		wake:      make(chan struct{}, 1),
		loaded:    make(chan struct{}),
		reviews:   map[reviewKey]review{},
		published: map[string]*mcpv1.GatewayCertificate{},
	}, nil
}

// ObservePods follows the source's pod changes: the service accounts of the pods are the
// candidates a certificate may go to.
func (c *Controller) ObservePods(u inventory.Update) {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := len(c.accounts)
	changed := false
	if u.Full {
		c.accounts, c.podSA = map[string]int{}, map[string]string{}
		changed = true
		defer c.loadedOnce.Do(func() { close(c.loaded) })
	}
	for _, ch := range u.Changes {
		if ch.Kind != inventory.Pod {
			continue
		}
		if old, ok := c.podSA[ch.Name]; ok {
			if c.accounts[old]--; c.accounts[old] == 0 {
				delete(c.accounts, old)
				changed = true
			}
			delete(c.podSA, ch.Name)
		}
		if p, ok := ch.Object.(*mcpv1.Pod); ok {
			sa := p.GetNamespace() + "/" + p.GetServiceAccount()
			c.podSA[ch.Name] = sa
			if c.accounts[sa]++; c.accounts[sa] == 1 {
				changed = true
			}
		}
	}
	if changed || before != len(c.accounts) {
		c.poke()
	}
}

func (c *Controller) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run watches the opted-in Secrets until ctx ends. Only Secrets with OptInLabel=true and type
// kubernetes.io/tls are listed and watched (server-side selectors), so the rest of the
// cluster's Secrets never reach this process.
func (c *Controller) Run(ctx context.Context) error {
	c.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.cfg.Client.CoreV1().Events("")})
	defer c.events.Shutdown()
	factory := informers.NewSharedInformerFactoryWithOptions(c.cfg.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = OptInLabel + "=true"
		o.FieldSelector = "type=" + string(corev1.SecretTypeTLS)
	}))
	inf := factory.Core().V1().Secrets().Informer()
	if err := inf.SetTransform(func(obj any) (any, error) {
		if s, ok := obj.(*corev1.Secret); ok {
			s.ManagedFields, s.Annotations = nil, nil // kubectl's last-applied copy would double the data
		}
		return obj, nil
	}); err != nil {
		return fmt.Errorf("secret informer: %w", err)
	}
	if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		if apierrors.IsForbidden(err) {
			c.cfg.Logger.Error("rbac: mcp-sync is forbidden to list and watch secrets cluster-wide; gateway certificates need verbs list, watch on secrets "+
				"(the chart's ClusterRole portcullis-mcp-sync grants them), or run with -gateway-certificates=false", "err", err)
			return
		}
		c.cfg.Logger.Warn("secret watch failed, serving the last gateway certificates and retrying", "err", err)
	}); err != nil {
		return fmt.Errorf("secret informer: %w", err)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.setSecret(obj) },
		UpdateFunc: func(_, obj any) { c.setSecret(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if s, ok := obj.(*corev1.Secret); ok {
				c.mu.Lock()
				delete(c.valid, s.Namespace+"/"+s.Name)
				c.mu.Unlock()
				c.poke()
			}
		},
	})
	if err != nil {
		return fmt.Errorf("secret informer: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return nil
	}
	c.cfg.Logger.Info("gateway certificate secrets listed", "label", OptInLabel+"=true")
	select {
	case <-ctx.Done():
		return nil
	case <-c.loaded:
	}
	tick := c.cfg.Clock.NewTicker(c.cfg.ReviewTTL / 2)
	defer tick.Stop()
	for {
		if err := c.reconcile(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Error("publishing gateway certificates, keeping the previous ones", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-tick.C():
		}
	}
}

// setSecret validates an added or updated Secret. A Secret that fails keeps its last good
// version published.
func (c *Controller) setSecret(obj any) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	gc, err := Validate(s, c.cfg.Clock.Now())
	if err != nil {
		var inv *Invalid
		reason := "Invalid"
		if errors.As(err, &inv) {
			reason = inv.Reason
		}
		c.cfg.Rejected.WithLabelValues(reason).Inc()
		c.cfg.Logger.Warn("gateway certificate secret refused, the last good version stays served",
			"namespace", s.Namespace, "name", s.Name, "reason", reason, "err", err)
		c.recorder.Eventf(s, corev1.EventTypeWarning, "GatewayCertificate"+reason,
			"not served to gateways, the last good version stays served: %v", err)
		return
	}
	c.mu.Lock()
	c.valid[gc.GetName()] = gc
	c.mu.Unlock()
	c.poke()
}

// reconcile publishes each valid certificate with the service accounts allowed to read it.
func (c *Controller) reconcile(ctx context.Context) error {
	c.mu.Lock()
	certs := maps.Clone(c.valid)
	accounts := slices.Sorted(maps.Keys(c.accounts))
	c.mu.Unlock()
	now := c.cfg.Clock.Now()
	var changes []inventory.Change
	for _, name := range slices.Sorted(maps.Keys(certs)) {
		next := proto.Clone(certs[name]).(*mcpv1.GatewayCertificate)
		for _, sa := range accounts {
			if c.mayRead(ctx, sa, next, now) {
				next.AllowedServiceAccounts = append(next.AllowedServiceAccounts, sa)
			}
		}
		if prev, ok := c.published[name]; ok && proto.Equal(prev, next) {
			continue
		}
		changes = append(changes, inventory.Change{Kind: inventory.GatewayCertificate, Name: name, Object: next})
	}
	for name := range c.published {
		if _, ok := certs[name]; !ok {
			changes = append(changes, inventory.Change{Kind: inventory.GatewayCertificate, Name: name})
		}
	}
	for k := range c.reviews {
		if _, ok := certs[k.secret]; !ok || !slices.Contains(accounts, k.account) {
			delete(c.reviews, k)
		}
	}
	if len(changes) == 0 {
		return nil
	}
	if err := c.cfg.Snapshots.Apply(inventory.Update{Changes: changes}); err != nil {
		return err
	}
	for _, ch := range changes {
		if ch.Object == nil {
			delete(c.published, ch.Name)
		} else {
			c.published[ch.Name] = ch.Object.(*mcpv1.GatewayCertificate)
		}
	}
	return nil
}

// mayRead reports whether service account sa ("<ns>/<name>") may get the Secret, reusing an
// answer younger than ReviewTTL. A review that fails keeps the previous answer (or denies).
func (c *Controller) mayRead(ctx context.Context, sa string, gc *mcpv1.GatewayCertificate, now time.Time) bool {
	k := reviewKey{sa, gc.GetName()}
	prev, had := c.reviews[k]
	if had && now.Sub(prev.at) < c.cfg.ReviewTTL {
		return prev.allowed
	}
	allowed, err := c.review(ctx, sa, gc)
	if err != nil {
		c.cfg.Reviews.WithLabelValues("error").Inc()
		if ctx.Err() == nil {
			c.cfg.Logger.Warn("subject access review failed, keeping the previous answer",
				"service_account", sa, "secret", gc.GetName(), "previous", prev.allowed, "err", err)
		}
		return prev.allowed
	}
	c.reviews[k] = review{allowed: allowed, at: now}
	return allowed
}

func (c *Controller) review(ctx context.Context, sa string, gc *mcpv1.GatewayCertificate) (bool, error) {
	ns, name, _ := cutAccount(sa)
	sar, err := c.cfg.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, accessReview(ns, name, gc), metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	result := "denied"
	if sar.Status.Allowed {
		result = "allowed"
	}
	c.cfg.Reviews.WithLabelValues(result).Inc()
	return sar.Status.Allowed, nil
}

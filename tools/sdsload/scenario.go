package sdsload

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// kms-adapter's count of signed certificates (services/kms-adapter/internal/kms/kmsmetrics).
const (
	signTotal  = "portcullis_kms_sign_total"
	signOK     = `result="ok"`
	heapInuse  = "go_memstats_heap_inuse_bytes"
	stackInuse = "go_memstats_stack_inuse_bytes"
)

// Sidecars mints a token per pod, as the API server would for its service account.
func Sidecars(s *stack.Stack, pods []stack.Pod) ([]Sidecar, error) {
	out := make([]Sidecar, len(pods))
	for i, p := range pods {
		tok, err := s.Token(p, 2*time.Hour)
		if err != nil {
			return nil, err
		}
		out[i] = Sidecar{NodeID: "sidecar~" + p.Key(), Cred: sdsclient.Credential{Token: tok}}
	}
	return out, nil
}

// Memory is an agent's footprint before and after opening the streams. Heap figures are taken
// right after a forced GC when the agent serves pprof (GCForced), else as they are.
type Memory struct {
	Streams                 int
	RSSBefore, RSSAfter     uint64
	HeapBefore, HeapAfter   float64
	StackBefore, StackAfter float64 // goroutine stacks (go_memstats_stack_inuse_bytes)
	GCForced                bool
}

// RSSPerStream and HeapPerStream are the growth divided by the number of streams.
func (m Memory) RSSPerStream() float64 {
	return (float64(m.RSSAfter) - float64(m.RSSBefore)) / float64(m.Streams)
}
func (m Memory) HeapPerStream() float64 { return (m.HeapAfter - m.HeapBefore) / float64(m.Streams) }
func (m Memory) StackPerStream() float64 {
	return (m.StackAfter - m.StackBefore) / float64(m.Streams)
}

func (m Memory) String() string {
	return fmt.Sprintf("agent RSS %.1f -> %.1f MiB (%.1f KiB/stream), heap in use %.1f -> %.1f MiB (%.1f KiB/stream), stacks %.1f -> %.1f MiB (%.1f KiB/stream), gc forced: %t",
		float64(m.RSSBefore)/(1<<20), float64(m.RSSAfter)/(1<<20), m.RSSPerStream()/1024,
		m.HeapBefore/(1<<20), m.HeapAfter/(1<<20), m.HeapPerStream()/1024,
		m.StackBefore/(1<<20), m.StackAfter/(1<<20), m.StackPerStream()/1024, m.GCForced)
}

// Load is a fleet of streams held open on one agent, and the admin connection that rotates the CA.
type Load struct {
	Fleet         *Fleet
	Memory        Memory
	Open          time.Duration // to open every stream and get every first response
	FirstResponse Summary

	admin     kmsv1.KMSAdminServiceClient
	adminConn *grpc.ClientConn
}

// LoadConfig configures StartLoad.
type LoadConfig struct {
	Stack *stack.Stack
	Node  string
	Pods  []stack.Pod
	Fleet FleetConfig // Socket and Sidecars are filled in
}

// StartLoad opens the streams on the node's agent and measures what they cost it.
func StartLoad(ctx context.Context, cfg LoadConfig) (*Load, error) {
	admin, conn, err := cfg.Stack.Admin()
	if err != nil {
		return nil, err
	}
	l := &Load{admin: admin, adminConn: conn}
	if cfg.Fleet.Sidecars, err = Sidecars(cfg.Stack, cfg.Pods); err != nil {
		conn.Close()
		return nil, err
	}
	cfg.Fleet.Socket = cfg.Stack.Socket(cfg.Node)
	agent := cfg.Stack.Agent(cfg.Node)
	measure := func(rss *uint64, heap, stacks *float64) error {
		l.Memory.GCForced = CollectGarbage(ctx, agent.Addr("admin"))
		var err error
		if *rss, err = RSS(agent.Pid()); err != nil {
			return err
		}
		if *heap, err = Metric(ctx, agent.Addr("admin"), heapInuse); err != nil {
			return err
		}
		*stacks, err = Metric(ctx, agent.Addr("admin"), stackInuse)
		return err
	}
	if err := measure(&l.Memory.RSSBefore, &l.Memory.HeapBefore, &l.Memory.StackBefore); err != nil {
		conn.Close()
		return nil, err
	}
	start := time.Now()
	f, first, err := Open(ctx, cfg.Fleet)
	if err != nil {
		conn.Close()
		return nil, err
	}
	l.Fleet, l.Open, l.FirstResponse = f, time.Since(start), Summarize(first)
	l.Memory.Streams = f.Len()
	if err := measure(&l.Memory.RSSAfter, &l.Memory.HeapAfter, &l.Memory.StackAfter); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// RotateBundle adds a new root to the trust bundle (RotateCA PREPARE: kms-adapter publishes
// the bundle event on NATS) and returns, per stream, the time from the start of that call until
// the stream received a ROOTCA holding the new root.
func (l *Load) RotateBundle(ctx context.Context) ([]time.Duration, error) {
	start := time.Now()
	st, err := l.admin.RotateCA(ctx, &kmsv1.RotateCARequest{Step: kmsv1.RotationStep_ROTATION_STEP_PREPARE})
	if err != nil {
		return nil, fmt.Errorf("rotate ca prepare: %w", err)
	}
	if len(st.GetNext().GetRoot()) == 0 {
		return nil, errors.New("rotate ca prepare: no next root in the answer")
	}
	next := pemOf(st.GetNext().GetRoot())
	return l.Fleet.AwaitBundle(ctx, func(ca []byte) bool { return bytes.Contains(ca, next) }, start)
}

// Settle finishes the rotation RotateBundle began and waits for its effects, so that
// RotateBundle can run again on a quiet agent: ACTIVATE, until every stream has a certificate
// re-issued under the new CA; then RETIRE with force, until every stream holds a bundle of the
// new root alone.
func (l *Load) Settle(ctx context.Context) error {
	start := time.Now()
	st, err := l.admin.RotateCA(ctx, &kmsv1.RotateCARequest{Step: kmsv1.RotationStep_ROTATION_STEP_ACTIVATE})
	if err != nil {
		return fmt.Errorf("rotate ca activate: %w", err)
	}
	active := pemOf(st.GetActive().GetRoot())
	if err := l.Fleet.AwaitCertificate(ctx, start); err != nil {
		return err
	}
	start = time.Now()
	if _, err := l.admin.RotateCA(ctx, &kmsv1.RotateCARequest{Step: kmsv1.RotationStep_ROTATION_STEP_RETIRE, Force: true}); err != nil {
		return fmt.Errorf("rotate ca retire: %w", err)
	}
	_, err = l.Fleet.AwaitBundle(ctx, func(ca []byte) bool { return bytes.Equal(ca, active) }, start)
	return err
}

// Close closes the streams and the admin connection.
func (l *Load) Close() error {
	return errors.Join(l.Fleet.Close(), l.adminConn.Close())
}

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// BurstResult is what serving a node full of new pods took.
type BurstResult struct {
	Pods          int
	Served        time.Duration // from the first request until every pod had its first response
	FirstResponse Summary
	Signatures    float64 // kms-adapter's successful signatures during the burst
}

func (r BurstResult) String() string {
	return fmt.Sprintf("%d pods served in %s (first response %s), %.0f KMS signatures",
		r.Pods, r.Served.Round(time.Millisecond), r.FirstResponse, r.Signatures)
}

// Burst has every pod open one stream at the same moment (each on its own connection, as
// sidecars in different pods would) and waits until all are served.
func Burst(ctx context.Context, s *stack.Stack, node string, pods []stack.Pod) (BurstResult, error) {
	sidecars, err := Sidecars(s, pods)
	if err != nil {
		return BurstResult{}, err
	}
	kms := s.Process(stack.KMSAdapter).Addr("admin")
	before, err := Metric(ctx, kms, signTotal, signOK)
	if errors.Is(err, ErrNoSample) {
		before, err = 0, nil // nothing signed yet: the counter has no sample
	}
	if err != nil {
		return BurstResult{}, err
	}
	start := time.Now()
	f, first, err := Open(ctx, FleetConfig{Socket: s.Socket(node), Sidecars: sidecars, StreamsPerConn: 1})
	served := time.Since(start)
	if err != nil {
		return BurstResult{}, err
	}
	if err := f.Close(); err != nil {
		return BurstResult{}, err
	}
	after, err := Metric(ctx, kms, signTotal, signOK)
	if err != nil {
		return BurstResult{}, err
	}
	return BurstResult{Pods: len(pods), Served: served, FirstResponse: Summarize(first), Signatures: after - before}, nil
}

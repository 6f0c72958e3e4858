package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/podcgroup"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// An agent killed with SIGKILL and started again serves every identity it held at once, from
// its state directory: each of 1,000 streams (half of them reconnecting like Envoy and asking
// again, half like MOSN, silently) gets a certificate with the same key, and kms-adapter signs
// nothing.
func TestAgentRestartLosesNoSidecar(t *testing.T) {
	r := startRestartRig(t, 500) // two pods: 1,000 streams
	t.Logf("%d streams served again %s after SIGKILL", 1000, r.restart(t).Round(time.Millisecond))
	if n := r.signs(t); n != 0 {
		t.Fatalf("kms-adapter signed %d certificates after the restart, want none", n)
	}
}

// restartRig is a stack whose node-a agent keeps state, and two sidecar children, in the pod
// cgroups of frontend-0 and cart-0, holding perPod streams each.
type restartRig struct {
	s        *stack.Stack
	children []*sidecarChild
	before   []childAnswer
	perPod   int
	signed   string // kms-adapter's signature count once every stream was served
}

func startRestartRig(tb testing.TB, perPod int, agentFlags ...string) *restartRig {
	tb.Helper()
	cg := podcgroup.New(tb)
	s, _ := startStackOpts(tb, stack.Options{WorkloadAttestation: "token+peer", AgentState: true,
		Extra: map[string][]string{stack.NodeAgent: append([]string{"-cgroup-root", cg.CgroupRoot()}, agentFlags...)}})
	r := &restartRig{s: s, perPod: perPod}
	for _, uid := range []string{frontend0UID, cart0UID} {
		c := startSidecarChild(tb, s.Socket("node-a"))
		dir, _ := cg.Pod(uid)
		cg.Move(c.pid(), dir)
		c.do(fmt.Sprintf("open %d", perPod/2))
		c.do(fmt.Sprintf("open %d silent", perPod-perPod/2))
		r.children = append(r.children, c)
	}
	for i, c := range r.children {
		st := waitFresh(tb, c, perPod)
		if len(st.Keys) != 1 || len(st.IDs) != 1 {
			tb.Fatalf("child %d: %+v; want one identity and one key", i, st)
		}
		r.before = append(r.before, st)
	}
	r.signed = metric(tb, s.Process(stack.KMSAdapter), kmsSigned)
	return r
}

const kmsSigned = `portcullis_kms_sign_total{result="ok"}`

// restart SIGKILLs node-a's agent, starts it again and returns how long it took until every
// stream was served again, each with the certificate and key it had.
func (r *restartRig) restart(tb testing.TB) time.Duration {
	tb.Helper()
	for _, c := range r.children {
		c.do("mark")
	}
	if err := r.s.Agent("node-a").Kill(); err != nil {
		tb.Fatal(err)
	}
	killed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.s.Resume(ctx, "nodeagent-node-a"); err != nil {
		tb.Fatal(err)
	}
	for i, c := range r.children {
		after := waitFresh(tb, c, r.perPod)
		if b := r.before[i]; !slices.Equal(after.Keys, b.Keys) || !slices.Equal(after.Serials, b.Serials) || !slices.Equal(after.IDs, b.IDs) {
			tb.Fatalf("child %d after the restart: %+v; want the certificate and key it had: %+v", i, after, b)
		}
	}
	return time.Since(killed)
}

// signs is how many certificates kms-adapter signed since every stream was first served.
func (r *restartRig) signs(tb testing.TB) int {
	tb.Helper()
	now, _ := strconv.Atoi(metric(tb, r.s.Process(stack.KMSAdapter), kmsSigned))
	then, _ := strconv.Atoi(r.signed)
	return now - then
}

// waitFresh waits until every one of a child's n streams has received a certificate in the
// current epoch, and returns the child's status then.
func waitFresh(t testing.TB, c *sidecarChild, n int) childAnswer {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st := c.do("status")
		if st.Fresh == n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d streams served after a minute: %+v", st.Fresh, n, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// BenchmarkAgentRestart measures how long after a SIGKILL an agent's restart takes until every
// stream (10,000 over 100 connections; 1,000 with -short) is served again, and how many
// signatures kms-adapter made meanwhile (the target is none).
func BenchmarkAgentRestart(b *testing.B) {
	perPod := 5000
	if testing.Short() {
		perPod = 500
	}
	// examples/cluster has two pods on node-a: let each hold its share of the streams.
	r := startRestartRig(b, perPod, "-sds-max-streams-per-pod", "10000")
	var took time.Duration
	for b.Loop() {
		took += r.restart(b)
	}
	b.ReportMetric(took.Seconds()/float64(b.N), "s-to-all-served")
	b.ReportMetric(float64(r.signs(b)), "kms-signatures")
	b.ReportMetric(float64(2*perPod), "streams")
}

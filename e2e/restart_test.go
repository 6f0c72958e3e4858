package e2e

import (
	"context"
	"fmt"
	"slices"
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
	const perPod = 500 // two pods: 1,000 streams
	cg := podcgroup.New(t)
	s, _ := startStackOpts(t, stack.Options{WorkloadAttestation: "token+peer", AgentState: true,
		Extra: map[string][]string{stack.NodeAgent: {"-cgroup-root", cg.CgroupRoot()}}})

	var children []*sidecarChild
	for _, uid := range []string{frontend0UID, cart0UID} {
		c := startSidecarChild(t, s.Socket("node-a"))
		dir, _ := cg.Pod(uid)
		cg.Move(c.pid(), dir)
		c.do(fmt.Sprintf("open %d", perPod/2))
		c.do(fmt.Sprintf("open %d silent", perPod/2))
		children = append(children, c)
	}
	before := make([]childAnswer, len(children))
	for i, c := range children {
		before[i] = waitFresh(t, c, perPod)
		if len(before[i].Keys) != 1 || len(before[i].IDs) != 1 {
			t.Fatalf("child %d before the restart: %+v; want one identity and one key", i, before[i])
		}
	}
	signed := metric(t, s.Process(stack.KMSAdapter), `portcullis_kms_sign_total{result="ok"}`)

	for _, c := range children {
		c.do("mark")
	}
	agent := s.Agent("node-a")
	if err := agent.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Resume(ctx, "nodeagent-node-a"); err != nil {
		t.Fatal(err)
	}
	for i, c := range children {
		after := waitFresh(t, c, perPod)
		if !slices.Equal(after.Keys, before[i].Keys) || !slices.Equal(after.Serials, before[i].Serials) || !slices.Equal(after.IDs, before[i].IDs) {
			t.Fatalf("child %d after the restart: %+v; want the certificates it had: %+v", i, after, before[i])
		}
	}
	t.Logf("%d streams served again %s after SIGKILL", 2*perPod, time.Since(killed).Round(time.Millisecond))
	if got := metric(t, s.Process(stack.KMSAdapter), `portcullis_kms_sign_total{result="ok"}`); got != signed {
		t.Fatalf("kms-adapter signed %s certificates by the end, %s before the restart: want none after", got, signed)
	}
}

// waitFresh waits until every one of a child's n streams has received a certificate in the
// current epoch, and returns the child's status then.
func waitFresh(t *testing.T, c *sidecarChild, n int) childAnswer {
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

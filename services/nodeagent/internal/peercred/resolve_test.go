package peercred

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// credsOf is what a handshake would record for a running child: its start time and, as
// SO_PEERPIDFD would give it, its pidfs inode.
func credsOf(t testing.TB, c *child) Creds {
	t.Helper()
	pidfd, err := unix.PidfdOpen(int(c.pid()), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	ino := pidfdIno(pidfd)
	if ino == 0 {
		t.Fatal("pidfds are not pidfs files on this kernel (Linux < 6.9)")
	}
	return Creds{PID: c.pid(), StartTime: startTimeOf(t, c.pid()), PIDFDIno: ino}
}

// startTimeOnly is creds as a kernel without pidfs gives them.
func startTimeOnly(c Creds) Creds {
	c.PIDFDIno = 0
	return c
}

// waitNextTick returns once the boot clock has passed the clock tick of startTime, so that a
// process started now has a later start time (USER_HZ, the unit of /proc's times, is 100).
func waitNextTick(t testing.TB, startTime uint64) {
	t.Helper()
	for {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
			t.Fatal(err)
		}
		if uint64(ts.Nano()/1e7) > startTime {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// TestResolveRealCgroups moves a real process between kubelet-style pod cgroups in the v1 pids
// hierarchy and the v2 unified one, and resolves it after each move.
func TestResolveRealCgroups(t *testing.T) {
	cg := newTestCgroups(t)
	podA, cidA := newPodUID(), newContainerID()
	podB, cidB := newPodUID(), newContainerID()
	v1A := cg.pod(t, "pids", "besteffort", podA, cidA)
	v1B := cg.pod(t, "pids", "", podB, cidB) // guaranteed: right under kubepods
	v2A := cg.pod(t, "unified", "burstable", podA, cidA)
	v2B := cg.pod(t, "unified", "besteffort", podB, cidB)
	r := &Resolver{CgroupRoot: cg.root}

	c := startChild(t, "sleep")
	creds := credsOf(t, c)
	resolve := func(wantPod, wantCID string) {
		t.Helper()
		content, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", c.pid()))
		p, err := r.Resolve(creds)
		if err != nil || p.PodUID != wantPod || p.ContainerID != wantCID || p.Creds != creds {
			t.Fatalf("Resolve = %+v, %v; want pod %s container %s\n/proc/%d/cgroup:\n%s", p, err, wantPod, wantCID, c.pid(), content)
		}
	}

	// Not in a pod yet: refused, and the message says so and names the cgroup.
	_, err := r.Resolve(creds)
	if !errors.Is(err, ErrNotInPod) || !strings.Contains(err.Error(), "no kubelet pod cgroup") || !strings.Contains(err.Error(), "/") {
		t.Fatalf("outside any pod: %v, want ErrNotInPod naming the cgroup", err)
	}
	t.Logf("outside any pod: %v", err)

	move(t, v1A, c.pid())
	resolve(podA, cidA)
	move(t, v1B, c.pid())
	resolve(podB, cidB)

	// v1 says pod B; v2 says pod A: two pods, refused.
	move(t, v2A, c.pid())
	if _, err := r.Resolve(creds); !errors.Is(err, ErrBadCgroup) {
		t.Fatalf("v1 in pod B, v2 in pod A: %v, want ErrBadCgroup", err)
	}
	move(t, v2B, c.pid())
	resolve(podB, cidB) // both say pod B

	// v2 alone (v1 back at the root, as on a pure v2 host), in each pod.
	move(t, cgroupFS+"/pids", c.pid())
	resolve(podB, cidB)
	move(t, v2A, c.pid())
	resolve(podA, cidA)

	// The agent told the kubelet's default root does not take this tree for pods.
	if _, err := (&Resolver{}).Resolve(creds); !errors.Is(err, ErrNotInPod) {
		t.Fatalf("with the default cgroup root: %v, want ErrNotInPod", err)
	}

	// A process whose cgroup tree imitates a pod below another pod's container cgroup is the
	// outer pod (a container with a delegated cgroup can make such a tree).
	nested := cg.pod(t, "unified", "besteffort", podA, cidA+"/kubepods/besteffort/pod"+podB+"/"+cidB)
	move(t, nested, c.pid())
	resolve(podA, cidA)
	move(t, cgroupFS+"/unified", c.pid())
	c.stop(t)
}

// TestResolveExited: a pid whose process exited (reaped, or a zombie not yet reaped) is
// ErrProcessChanged, not "not in a pod".
func TestResolveExited(t *testing.T) {
	r := &Resolver{}
	c := startChild(t, "sleep")
	creds := credsOf(t, c)
	c.stdin.Close()
	// Wait for the exit without reaping it: the child is a zombie.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, int(c.pid()), &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve(creds); !errors.Is(err, ErrProcessChanged) {
		t.Fatalf("zombie: %v, want ErrProcessChanged", err)
	}
	c.stop(t)
	p, err := r.Resolve(creds)
	if !errors.Is(err, ErrProcessChanged) || p.PodUID != "" || p.Creds != creds {
		t.Fatalf("reaped: %+v, %v, want ErrProcessChanged", p, err)
	}
	if _, err := r.StartTime(creds.PID); !errors.Is(err, ErrProcessChanged) {
		t.Fatalf("StartTime of a reaped pid: %v", err)
	}
	if _, err := r.Resolve(Creds{}); !errors.Is(err, ErrPIDNotVisible) {
		t.Fatalf("pid 0: %v, want ErrPIDNotVisible", err)
	}
}

// TestResolvePIDReuse is the attack: process A (pod A) has connected and its creds are
// recorded; it exits and its pid goes to process B in pod B. Resolving A's creds would read
// B's cgroup; the start time tells them apart.
func TestResolvePIDReuse(t *testing.T) {
	cg := newTestCgroups(t)
	podA, podB := newPodUID(), newPodUID()
	dirA := cg.pod(t, "pids", "burstable", podA, newContainerID())
	dirB := cg.pod(t, "pids", "burstable", podB, newContainerID())
	r := &Resolver{CgroupRoot: cg.root}

	a := startChild(t, "sleep")
	move(t, dirA, a.pid())
	credsA := credsOf(t, a)
	if p, err := r.Resolve(credsA); err != nil || p.PodUID != podA {
		t.Fatalf("A before it exits: %+v, %v", p, err)
	}
	a.stop(t)

	// B gets A's pid at once, most likely within A's clock tick: the start times may be equal,
	// and only the pidfs inode tells the two apart.
	b := startChildWithPID(t, credsA.PID)
	move(t, dirB, b.pid())
	credsB := credsOf(t, b)
	t.Logf("pid %d reused: start time %d (A) then %d (B), pidfs inode %d then %d",
		credsA.PID, credsA.StartTime, credsB.StartTime, credsA.PIDFDIno, credsB.PIDFDIno)
	if p, err := r.Resolve(credsB); err != nil || p.PodUID != podB {
		t.Fatalf("B itself: %+v, %v; want pod B", p, err)
	}
	p, err := r.Resolve(credsA)
	if !errors.Is(err, ErrProcessChanged) || p.PodUID != "" {
		t.Fatalf("A's creds with the pid now B's: %+v, %v; want ErrProcessChanged", p, err)
	}
	t.Logf("refused: %v", err)
	if credsA.StartTime == credsB.StartTime {
		// What a kernel without pidfs would see: the same pid and start time. Not checkable;
		// this is why the handshake records the pidfs inode.
		if p, err := r.Resolve(startTimeOnly(credsA)); err != nil || p.PodUID != podB {
			t.Fatalf("same tick, start time only: %+v, %v; the start times were equal, so B was expected", p, err)
		}
		t.Logf("same-tick reuse without the pidfs inode resolves to B's pod: the start time alone cannot tell")
	}
	b.stop(t)

	// A kernel without pidfs: the start time, once B starts in a later tick.
	a = startChild(t, "sleep")
	move(t, dirA, a.pid())
	credsA = startTimeOnly(credsOf(t, a))
	a.stop(t)
	waitNextTick(t, credsA.StartTime)
	b = startChildWithPID(t, credsA.PID)
	move(t, dirB, b.pid())
	if p, err := r.Resolve(credsA); !errors.Is(err, ErrProcessChanged) || p.PodUID != "" {
		t.Fatalf("start time only, pid reused in a later tick: %+v, %v; want ErrProcessChanged", p, err)
	}
}

// TestResolveRaceDuringResolution: the process exits and its pid is reused between reading
// the cgroup and re-reading the start time (the test hook holds Resolve there). The cgroup
// read was A's, but nothing can prove it any more: refused.
func TestResolveRaceDuringResolution(t *testing.T) {
	cg := newTestCgroups(t)
	podA, podB := newPodUID(), newPodUID()
	dirA := cg.pod(t, "pids", "besteffort", podA, newContainerID())
	dirB := cg.pod(t, "pids", "besteffort", podB, newContainerID())

	a := startChild(t, "sleep")
	move(t, dirA, a.pid())
	credsA := credsOf(t, a)
	var b *child
	r := &Resolver{CgroupRoot: cg.root, afterCgroupRead: func(c Creds) {
		a.stop(t)
		b = startChildWithPID(t, c.PID)
		move(t, dirB, b.pid())
	}}
	if p, err := r.Resolve(credsA); !errors.Is(err, ErrProcessChanged) || p.PodUID != "" {
		t.Fatalf("pid reused during Resolve: %+v, %v; want ErrProcessChanged", p, err)
	}
	if b == nil || b.pid() != credsA.PID {
		t.Fatal("the hook did not reuse the pid")
	}

	// The same race on a kernel without pidfs, B started in a later tick than A.
	b.stop(t)
	a = startChild(t, "sleep")
	move(t, dirA, a.pid())
	credsA = startTimeOnly(credsOf(t, a))
	r.afterCgroupRead = func(c Creds) {
		a.stop(t)
		waitNextTick(t, c.StartTime)
		b = startChildWithPID(t, c.PID)
		move(t, dirB, b.pid())
	}
	if p, err := r.Resolve(credsA); !errors.Is(err, ErrProcessChanged) || p.PodUID != "" {
		t.Fatalf("start time only, pid reused during Resolve: %+v, %v; want ErrProcessChanged", p, err)
	}
}

package peercred

// Real processes for the tests: the test binary re-executes itself as a helper (TestMain),
// and real cgroups to put them in.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const helperEnv = "PEERCRED_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := runHelper(mode); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// runHelper is the child process. Modes:
//
//	sleep: wait until stdin closes.
//	grpc:  wait for a line on stdin, drop to PEERCRED_UID/GID if set, call Health.Check on
//	       the gRPC server at PEERCRED_SOCKET, print "ok", then wait until stdin closes.
//	dial:  connect to the Unix socket PEERCRED_SOCKET, print "ok", wait for stdin to close.
//	dial-each-line: for each line on stdin, connect to PEERCRED_SOCKET, print "ok", hang up.
func runHelper(mode string) error {
	in := bufio.NewReader(os.Stdin)
	switch mode {
	case "sleep":
	case "grpc":
		if _, err := in.ReadString('\n'); err != nil {
			return err
		}
		if err := dropPrivileges(); err != nil {
			return err
		}
		conn, err := grpc.NewClient("unix://"+os.Getenv("PEERCRED_SOCKET"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			return err
		}
		fmt.Println("ok")
	case "dial":
		conn, err := net.Dial("unix", os.Getenv("PEERCRED_SOCKET"))
		if err != nil {
			return err
		}
		defer conn.Close()
		fmt.Println("ok")
	case "dial-each-line":
		for {
			if _, err := in.ReadString('\n'); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			conn, err := net.Dial("unix", os.Getenv("PEERCRED_SOCKET"))
			if err != nil {
				return err
			}
			fmt.Println("ok")
			conn.Close() // the server still accepts it, with the same credentials
		}
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	_, err := io.Copy(io.Discard, in)
	return err
}

func dropPrivileges() error {
	if g := os.Getenv("PEERCRED_GID"); g != "" {
		gid, _ := strconv.Atoi(g)
		if err := syscall.Setgroups(nil); err != nil {
			return err
		}
		if err := syscall.Setgid(gid); err != nil {
			return err
		}
	}
	if u := os.Getenv("PEERCRED_UID"); u != "" {
		uid, _ := strconv.Atoi(u)
		return syscall.Setuid(uid)
	}
	return nil
}

// child is a running helper process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	done  bool
}

func (c *child) pid() int32 { return int32(c.cmd.Process.Pid) }

// startChild starts a helper; it is stopped and reaped when the test ends.
func startChild(t testing.TB, mode string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// A race-enabled binary sleeps a second at exit unless told not to.
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode, "GORACE=atexit_sleep_ms=0"), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() { c.stop(t) })
	return c
}

// stop closes the child's stdin (it exits) and reaps it.
func (c *child) stop(t testing.TB) {
	if c.done {
		return
	}
	c.done = true
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Errorf("helper %d: %v", c.cmd.Process.Pid, err)
	}
}

// kill ends the child at once and reaps it.
func (c *child) kill() {
	if c.done {
		return
	}
	c.done = true
	c.cmd.Process.Kill()
	c.cmd.Wait()
}

// expect reads the child's next line of output.
func (c *child) expect(t testing.TB, want string) {
	t.Helper()
	line, err := c.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != want {
		t.Fatalf("helper %d said %q (%v), want %q", c.pid(), line, err, want)
	}
}

// startChildWithPID starts a sleep helper that gets pid want, by setting the kernel's last
// allocated pid (/proc/sys/kernel/ns_last_pid, root only) just before the fork. Other
// processes on the host (and the Go runtime's own threads) can take the pid first, so it
// retries; the pid must be free.
func startChildWithPID(t testing.TB, want int32) *child {
	t.Helper()
	for range 50 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(int(want-1))), 0); err != nil {
			t.Fatalf("forcing pid reuse: %v", err)
		}
		c := startChild(t, "sleep")
		if c.pid() == want {
			return c
		}
		c.kill()
		// Another process forked between the write and ours and took the pid: it is usually a
		// short-lived one (a compiler, a test helper); wait for the pid to be free again.
		for i := 0; i < 100; i++ {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", want)); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Fatalf("could not get pid %d after 50 forks (another process holds it)", want)
	return nil
}

// testCgroups makes kubelet-style pod cgroups in real hierarchies, under a cgroup root of its
// own (like a kubelet run with --cgroup-root): /sys/fs/cgroup/<hierarchy>/<root>/kubepods/...
// Never under a top-level kubepods: that is a real kubelet's (the cluster harness refuses to
// start if one exists, and a kubelet removes pod cgroups it does not know).
// TestCgroupPrefix names the top-level cgroups these tests make (in the pids and unified
// hierarchies, where this process sits at the root). The one-node cluster's host snapshot
// (tools/kubecluster) ignores this prefix: the tests run beside a cluster's.
const TestCgroupPrefix = "portcullis-test-"

type testCgroups struct {
	root string // "/portcullis-test-<random>", the Resolver's CgroupRoot
	made []string
}

const cgroupFS = "/sys/fs/cgroup"

// newTestCgroups registers the removal of every cgroup it makes. Call it before starting the
// processes that go in them: cleanups run last-in first-out, so the processes are reaped first.
func newTestCgroups(t testing.TB) *testCgroups {
	b := make([]byte, 6)
	rand.Read(b)
	cg := &testCgroups{root: "/" + TestCgroupPrefix + hex.EncodeToString(b)}
	t.Cleanup(func() {
		if err := cg.removeAll(); err != nil {
			t.Error(err)
		}
	})
	return cg
}

// pod makes <hierarchy>/<root>/kubepods/<qos>/pod<uid>/<cid> (qos "" for a guaranteed pod)
// and returns its directory.
func (cg *testCgroups) pod(t testing.TB, hierarchy, qos, podUID, cid string) string {
	t.Helper()
	dir := filepath.Join(cgroupFS, hierarchy, cg.root, "kubepods", qos, "pod"+podUID, cid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("making cgroup: %v", err)
	}
	top := filepath.Join(cgroupFS, hierarchy, cg.root)
	if !slices.Contains(cg.made, top) {
		cg.made = append(cg.made, top)
	}
	return dir
}

// move puts a process in the cgroup dir (any hierarchy).
func move(t testing.TB, dir string, pid int32) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(int(pid))), 0); err != nil {
		t.Fatalf("moving pid %d to %s: %v", pid, dir, err)
	}
}

// removeAll removes the test's cgroup trees, deepest first (cgroupfs removes only empty
// cgroups, one directory at a time). A cgroup stays busy for a moment after its last process
// is reaped, so it retries for a while.
func (cg *testCgroups) removeAll() error {
	var errs []error
	for _, top := range cg.made {
		var dirs []string
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
		for _, d := range dirs {
			var err error
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) || time.Now().After(deadline) {
					break
				}
			}
			if err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// newPodUID returns a random pod UID in the kubelet's form.
func newPodUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newContainerID returns a random 64-hex container ID.
func newContainerID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// startTimeOf reads a pid's start time the plain way, for the tests to compare with.
func startTimeOf(t testing.TB, pid int32) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	v, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

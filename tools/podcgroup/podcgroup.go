// Package podcgroup makes kubelet-style pod cgroups for tests, so that a real process can sit in
// "a pod" as the node agent's peer-credential attestation sees one: a cgroup path
// <prefix>/kubepods/besteffort/pod<uid>/<container id>, as the kubelet's cgroupfs driver makes
// with a cgroup root of <prefix>.
//
// The cgroups are made inside the test process's own cgroup of a hierarchy where that is not the
// root, so that nothing appears at the top of any hierarchy (the one-node cluster's tests compare
// those before and after, and run beside this package's users); failing that, at the top, named
// with TestPrefix, which that comparison ignores. It needs root.
package podcgroup

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Root is where the cgroup hierarchies are mounted.
const Root = "/sys/fs/cgroup"

// TestPrefix begins the name of every cgroup this package makes at the top of a tree; the
// one-node cluster's host snapshot ignores it (tools/kubecluster).
const TestPrefix = "portcullis-test-"

// Cgroups is a tree of pod cgroups in one hierarchy, removed when the test ends.
type Cgroups struct {
	tb    testing.TB
	mount string // the hierarchy's mount point
	base  string // <mount><own cgroup>/portcullis-test-<random>: "outside any pod"
	made  []string
}

// New makes the tree's base, or fails the test saying why no hierarchy can hold it.
func New(tb testing.TB) *Cgroups {
	tb.Helper()
	mount, own, err := ownCgroup()
	if err != nil {
		tb.Fatalf("podcgroup: %v", err)
	}
	c := &Cgroups{tb: tb, mount: mount, base: filepath.Join(mount, own, TestPrefix+randomHex(4))}
	if err := os.Mkdir(c.base, 0o755); err != nil {
		tb.Fatalf("podcgroup: %v (pod cgroups need root)", err)
	}
	c.made = append(c.made, c.base)
	tb.Cleanup(c.remove)
	return c
}

// ownCgroup finds a hierarchy where this process's cgroup is not the root: v1 controllers first
// (cgroupfs kubelets on hybrid hosts), then the v2 unified mount.
func ownCgroup() (mount, own string, err error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	var seen []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		seen = append(seen, sc.Text())
		if parts[2] == "/" || strings.Contains(parts[1], ",") {
			continue
		}
		mount := filepath.Join(Root, strings.TrimPrefix(parts[1], "name="))
		if parts[1] == "" {
			mount = filepath.Join(Root, "unified")
			if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
				mount = Root // a pure v2 host
			}
		}
		if _, err := os.Stat(filepath.Join(mount, parts[2], "cgroup.procs")); err == nil {
			return mount, parts[2], nil
		}
	}
	// At the root everywhere: a top-level cgroup with the prefix the cluster's host snapshot
	// ignores (tools/kubecluster).
	for _, h := range []string{"pids", "unified", ""} {
		mount := filepath.Join(Root, h)
		if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err == nil {
			return mount, "/", nil
		}
	}
	return "", "", fmt.Errorf("no writable cgroup hierarchy under %s (this process: %s)", Root, strings.Join(seen, "; "))
}

// CgroupRoot is the tree's root as a kubelet's --cgroup-root names it (the path in
// /proc/<pid>/cgroup): the node agent's -cgroup-root.
func (c *Cgroups) CgroupRoot() string { return "/" + strings.TrimPrefix(c.base, c.mount+"/") }

// Outside is a cgroup in no pod.
func (c *Cgroups) Outside() string { return c.base }

// Pod makes the cgroup of one container of pod uid (a new container ID each call) and returns it
// and the container ID.
func (c *Cgroups) Pod(uid string) (dir, containerID string) {
	c.tb.Helper()
	containerID = randomHex(32)
	pod := filepath.Join(c.base, "kubepods", "besteffort", "pod"+uid)
	dir = filepath.Join(pod, containerID)
	for _, d := range []string{filepath.Join(c.base, "kubepods"), filepath.Dir(pod), pod, dir} {
		if err := os.Mkdir(d, 0o755); err == nil {
			c.made = append(c.made, d)
		} else if !errors.Is(err, os.ErrExist) {
			c.tb.Fatalf("podcgroup: %v", err)
		}
	}
	return dir, containerID
}

// Move puts process pid (all its threads) into cgroup dir.
func (c *Cgroups) Move(pid int, dir string) {
	c.tb.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		c.tb.Fatalf("podcgroup: moving %d to %s: %v", pid, dir, err)
	}
}

// remove moves what is left in the tree to the test's own cgroup and removes the tree, deepest
// first (a cgroup goes only once empty, and for a moment after its last process exited it is
// still busy).
func (c *Cgroups) remove() {
	own := filepath.Dir(c.base)
	for i := len(c.made) - 1; i >= 0; i-- {
		d := c.made[i]
		if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(b)) {
				_ = os.WriteFile(filepath.Join(own, "cgroup.procs"), []byte(pid), 0o644)
			}
		}
		var err error
		for range 100 {
			if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			c.tb.Errorf("podcgroup: removing %s: %v", d, err)
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

package kubecluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// shadowedDirs are the host directories that the node's mount namespace replaces with the
// cluster's own: every path containerd, runc, the CNI plugins and the kubelet insist on is under
// one of them.
var shadowedDirs = []string{"/run", "/var/lib", "/var/log"}

// kubeProxyTables are the nftables tables kube-proxy's nftables mode creates (and only those).
var kubeProxyTables = []string{"ip kube-proxy", "ip6 kube-proxy"}

// kubeletTunableValues are the kernel tunables the kubelet wants (pkg/kubelet/cm
// setupKernelTunables). With protectKernelDefaults it fails when they differ instead of writing
// them, so the node's namespace shows it these values: files bind-mounted over /proc/sys.
var kubeletTunableValues = map[string]string{
	"vm.overcommit_memory":      "1",
	"vm.panic_on_oom":           "0",
	"kernel.panic":              "10",
	"kernel.panic_on_oops":      "1",
	"kernel.keys.root_maxkeys":  "1000000",
	"kernel.keys.root_maxbytes": "25000000",
}

// LockFile is taken by a running cluster (flock) and holds its hostState.
var LockFile = filepath.Join(os.TempDir(), "portcullis-kubecluster.lock")

// hostState is what a cluster put on the host, recorded before it does so, so that a later
// Start or `kubecluster down` can remove it if the process that started the cluster died.
type hostState struct {
	Pid    int    `json:"pid"`
	Dir    string `json:"dir"`
	Bridge string `json:"bridge"`
	OwnDir bool   `json:"own_dir"` // the cluster made Dir: remove it
}

type hostLock struct {
	f *os.File
}

// lockHost takes LockFile, failing if another live cluster holds it for longer than wait. If the lock file
// names a cluster whose process died, what that cluster left on the host is removed first.
func lockHost(log *slog.Logger, wait time.Duration) (*hostLock, error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(LockFile, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			b, _ := os.ReadFile(LockFile)
			f.Close()
			if time.Now().Before(deadline) {
				time.Sleep(500 * time.Millisecond) // polling: a blocking flock cannot time out
				continue
			}
			return nil, fmt.Errorf("another kubecluster is running on this machine (lock %s held: %s); one cluster per machine: stop it first (`go tool task cluster:down` if it was started by cluster:up)",
				LockFile, strings.TrimSpace(string(b)))
		}
		// The previous holder may have removed the file between our open and flock: then
		// this lock guards nothing; take the new file's.
		var held, onDisk syscall.Stat_t
		if syscall.Fstat(int(f.Fd()), &held) != nil || syscall.Stat(LockFile, &onDisk) != nil || held.Ino != onDisk.Ino {
			f.Close()
			continue
		}
		l := &hostLock{f: f}
		var prev hostState
		if b, _ := os.ReadFile(LockFile); len(bytes.TrimSpace(b)) > 0 && json.Unmarshal(b, &prev) == nil && prev.Dir != "" {
			log.Warn("removing what a dead cluster left on the host", "pid", prev.Pid, "dir", prev.Dir)
			if err := cleanupHost(prev, prev.OwnDir); err != nil {
				l.release()
				return nil, fmt.Errorf("cleaning up after the dead cluster of %s: %w", LockFile, err)
			}
		}
		return l, nil
	}
}

func (l *hostLock) record(s hostState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := l.f.Truncate(0); err != nil {
		return err
	}
	if _, err := l.f.WriteAt(append(b, '\n'), 0); err != nil {
		return err
	}
	return l.f.Sync()
}

// unlock unlocks the lock file and leaves it, with its record, on disk.
func (l *hostLock) unlock() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// release removes the lock file (the host as found) and unlocks it.
func (l *hostLock) release() {
	if l == nil || l.f == nil {
		return
	}
	os.Remove(LockFile)
	l.f.Close()
	l.f = nil
}

// checkHostFree fails if a bridge, kube-proxy table or kubepods cgroup is already there: it was
// not made by a cluster of ours (that would have been cleaned up), so it is not ours to remove.
func checkHostFree(bridge string) error {
	var found []string
	if _, err := os.Stat("/sys/class/net/" + bridge); err == nil {
		found = append(found, "network interface "+bridge)
	}
	for _, t := range kubeProxyTables {
		if exec.Command("nft", append([]string{"list", "table"}, strings.Fields(t)...)...).Run() == nil {
			found = append(found, "nftables table "+t)
		}
	}
	found = append(found, kubepodsCgroups()...)
	if len(found) > 0 {
		return fmt.Errorf("the host already has %s: another Kubernetes node runs here, or a cluster's cleanup failed; remove them by hand", strings.Join(found, ", "))
	}
	return nil
}

// setupBridge creates the pods' bridge with the node's address and routes the Service range to
// it. Forwarding is turned on for packets that arrive on this bridge only (its own sysctl, gone
// with it): a pod's packet to a ClusterIP is translated to another pod's address and leaves by the
// same bridge. net.ipv4.ip_forward stays as it was, so nothing is routed to or from the host's
// other interfaces.
func setupBridge(n network) error {
	cmds := [][]string{
		{"link", "add", "name", n.bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", n.nodeIP, n.podCIDR.Bits()), "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
		{"route", "add", n.serviceCIDR.String(), "dev", n.bridge, "src", n.nodeIP.String()},
	}
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
	}
	return os.WriteFile("/proc/sys/net/ipv4/conf/"+n.bridge+"/forwarding", []byte("1"), 0o644)
}

// kubeletTunables writes a file per kernel tunable whose host value differs from the kubelet's
// and returns them by name, for nodeScript to bind-mount.
func kubeletTunables(dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	files := map[string]string{}
	for name, want := range kubeletTunableValues {
		have, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(string(have)) == want {
			continue
		}
		files[name] = filepath.Join(dir, name)
		if err := os.WriteFile(files[name], []byte(want+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// kubepodsCgroups are the kubelet's top cgroup directories in every hierarchy.
func kubepodsCgroups() []string {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	if _, err := os.Stat("/sys/fs/cgroup/kubepods"); err == nil {
		dirs = append(dirs, "/sys/fs/cgroup/kubepods") // cgroup v2
	}
	return dirs
}

// cleanupHost removes what a cluster put on the host: the pods' processes (in the kubepods
// cgroups) and containerd's shims (which outlive containerd by design), the kubepods cgroups,
// kube-proxy's tables, the pods' veths and the bridge (its routes go with it), and the cluster's
// directory if the cluster made it.
func cleanupHost(s hostState, removeDir bool) error {
	var errs []error
	veths := bridgePorts(s.Bridge)
	killAll(func() []int {
		pids := cgroupProcs()
		if s.Dir != "" {
			pids = append(pids, shimProcs(s.Dir)...)
		}
		return pids
	})
	for _, d := range kubepodsCgroups() {
		if err := removeCgroupTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range kubeProxyTables {
		args := append([]string{"delete", "table"}, strings.Fields(t)...)
		if out, err := exec.Command("nft", args...).CombinedOutput(); err != nil && !bytes.Contains(out, []byte("No such file")) {
			errs = append(errs, fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out)))
		}
	}
	// A pod's network namespace outlives its processes while a TCP socket of it is still
	// closing (an orphan in FIN_WAIT, for minutes if its peer is gone): delete the veths
	// (both ends go), so that nothing of it shows on the host meanwhile.
	for _, link := range append(veths, s.Bridge) {
		if _, err := os.Stat("/sys/class/net/" + link); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "link", "del", link).CombinedOutput(); err != nil && !bytes.Contains(out, []byte("Cannot find device")) {
			errs = append(errs, fmt.Errorf("ip link del %s: %v: %s", link, err, bytes.TrimSpace(out)))
		}
	}
	if err := waitGone(veths, 30*time.Second); err != nil {
		errs = append(errs, err)
	}
	if removeDir && s.Dir != "" {
		if err := removeAllRetry(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killAll SIGKILLs the processes list returns until it returns none.
func killAll(list func() []int) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		pids := list()
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond) // the kernel reaps asynchronously
	}
}

// cgroupProcs are the processes in any kubepods cgroup.
func cgroupProcs() []int {
	var pids []int
	for _, top := range kubepodsCgroups() {
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// shimProcs are the containerd shims of the cluster in dir: their command line names its
// containerd's socket. An empty dir means every containerd shim on the host.
func shimProcs(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && (dir == "" || bytes.Contains(cmdline, []byte(dir+"/"))) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroupTree removes a cgroup directory and its children, deepest first (cgroupfs only
// lets empty cgroups go, one directory at a time).
func removeCgroupTree(top string) error {
	var dirs []string
	_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var last error
	for range 100 { // a cgroup is busy for a moment after its last process is reaped
		last = nil
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				last = fmt.Errorf("removing cgroup %s: %w", d, err)
			}
		}
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// bridgePorts are the interfaces attached to the bridge (the pods' veths).
func bridgePorts(bridge string) []string {
	entries, _ := os.ReadDir("/sys/class/net/" + bridge + "/brif")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func waitGone(links []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		var left []string
		for _, l := range links {
			if _, err := os.Stat("/sys/class/net/" + l); err == nil {
				left = append(left, l)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod interfaces still there after %s: %s", timeout, strings.Join(left, ", "))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// removeAllRetry removes dir; a mount of the node's namespace may still hold a file under it
// for a moment after the namespace's last process died.
func removeAllRetry(dir string) error {
	var err error
	for range 50 {
		if err = os.RemoveAll(dir); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Down stops the cluster running on this machine, if any: the process that holds the lock (for
// example `kubecluster up`) gets SIGTERM and stops its cluster; then whatever a dead cluster left
// on the host is removed.
func Down(ctx context.Context, log *slog.Logger) error { return down(ctx, log, nil) }

// down is Down, calling unlocking (if set) after the cleanup and before it releases the lock.
func down(ctx context.Context, log *slog.Logger, unlocking func()) error {
	b, err := os.ReadFile(LockFile)
	if os.IsNotExist(err) {
		return nil
	}
	var s hostState
	if err == nil && json.Unmarshal(b, &s) == nil && s.Pid > 0 && lockHeld() {
		log.Info("stopping the running cluster", "pid", s.Pid, "dir", s.Dir)
		if err := syscall.Kill(s.Pid, syscall.SIGTERM); err != nil {
			return fmt.Errorf("signalling the cluster's process %d: %w", s.Pid, err)
		}
		for lockHeld() {
			select {
			case <-ctx.Done():
				return fmt.Errorf("the cluster's process %d still holds %s: %w", s.Pid, LockFile, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	l, err := lockHost(log, 0)
	if err != nil {
		return err
	}
	if unlocking != nil {
		unlocking()
	}
	l.release()
	return nil
}

// lockHeld reports whether a live process holds LockFile.
func lockHeld() bool {
	f, err := os.Open(LockFile)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return true
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

package kubecluster

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// HostSnapshot is the host state a cluster could change: what tests compare before Start and
// after Stop to prove the host is left as it was found.
type HostSnapshot map[string]string

// hostDirs are paths a Kubernetes node puts on a host when nothing stops it.
var hostDirs = []string{
	"/var/lib/kubelet", "/run/containerd", "/run/netns", "/var/lib/cni", "/var/log/containers",
	"/var/log/pods", "/etc/cni", "/opt/cni", "/opt/containerd", "/var/lib/containerd",
	"/etc/kubernetes", "/usr/libexec/kubernetes", "/run/runc", "/run/xtables.lock", "/run/mount",
}

// volatileSysctls change on their own; they are not compared.
var volatileSysctls = []string{
	"fs/dentry-state", "fs/file-nr", "fs/inode-nr", "fs/inode-state", "fs/quota/", "kernel/random/",
	"kernel/ns_last_pid", "kernel/pty/nr", "net/netfilter/nf_conntrack_count", "kernel/tainted",
	"fs/binfmt_misc/", "kernel/sched_domain/", "net/ipv4/tcp_fastopen_key", "vm/stat_refresh",
}

// SnapshotHost records the nftables ruleset, network interfaces, routes, mounts, network
// namespaces, top-level cgroups, sysctls (/proc/sys but per-interface settings and counters)
// and the directories a node would create. extraPaths are recorded as existing or not.
func SnapshotHost(extraPaths ...string) (HostSnapshot, error) {
	s := HostSnapshot{}
	for name, args := range map[string][]string{
		"nft ruleset": {"nft", "list", "ruleset"},
		"ipv4 routes": {"ip", "-4", "route", "show", "table", "all"},
		"ipv6 routes": {"ip", "-6", "route", "show", "table", "all"},
		"ipv4 rules":  {"ip", "-4", "rule", "show"},
	} {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		s[name] = string(out)
	}
	links, _ := os.ReadDir("/sys/class/net")
	s["links"] = joinNames(links)
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mountLines []string
	for _, l := range strings.Split(strings.TrimSpace(string(mounts)), "\n") {
		f := strings.Fields(l) // id parent major:minor root mountpoint options ... - fstype source
		if len(f) > 4 {
			mountLines = append(mountLines, f[3]+" "+f[4])
		}
	}
	sort.Strings(mountLines)
	s["mounts"] = strings.Join(mountLines, "\n")
	netns, _ := os.ReadDir("/run/netns")
	s["netns"] = joinNames(netns)
	hierarchies, _ := os.ReadDir("/sys/fs/cgroup")
	for _, h := range hierarchies {
		entries, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", h.Name()))
		var dirs []string
		for _, e := range entries {
			// Unit tests of other packages make and remove pod cgroups of their own, with this
			// prefix, beside a running cluster (services/nodeagent/internal/peercred).
			if e.IsDir() && !strings.HasPrefix(e.Name(), "portcullis-test-") {
				dirs = append(dirs, e.Name())
			}
		}
		s["cgroups "+h.Name()] = strings.Join(dirs, " ")
	}
	for _, p := range append(append([]string{}, hostDirs...), append(extraPaths, LockFile)...) {
		_, err := os.Lstat(p)
		s["path "+p] = fmt.Sprint(err == nil)
	}
	s["containerd shims"] = fmt.Sprint(len(shimProcs("")))
	return s, snapshotSysctls(s)
}

func snapshotSysctls(s HostSnapshot) error {
	return filepath.WalkDir("/proc/sys", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel := strings.TrimPrefix(p, "/proc/sys/")
		if d.IsDir() {
			// Per-interface settings come and go with the interfaces, which are compared.
			for _, parent := range []string{"net/ipv4/conf/", "net/ipv6/conf/", "net/ipv4/neigh/", "net/ipv6/neigh/", "net/mpls/conf/"} {
				if iface, ok := strings.CutPrefix(rel, parent); ok && !strings.Contains(iface, "/") && iface != "all" && iface != "default" {
					return filepath.SkipDir
				}
			}
			return nil
		}
		for _, v := range volatileSysctls {
			if strings.HasPrefix(rel, v) {
				return nil
			}
		}
		if d.Type()&fs.ModePerm == 0 {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil // write-only or refused: not a setting one can compare
		}
		s["sysctl "+strings.ReplaceAll(rel, "/", ".")] = string(bytes.TrimSpace(b))
		return nil
	})
}

// Diff lists what differs between two snapshots, one line per key.
func (s HostSnapshot) Diff(after HostSnapshot) []string {
	keys := map[string]bool{}
	for k := range s {
		keys[k] = true
	}
	for k := range after {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		if s[k] != after[k] {
			diffs = append(diffs, fmt.Sprintf("%s:\n  before: %s\n  after:  %s", k, indent(s[k]), indent(after[k])))
		}
	}
	sort.Strings(diffs)
	return diffs
}

func indent(v string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(v))
	for i := 0; sc.Scan(); i++ {
		if i > 0 {
			b.WriteString("\n          ")
		}
		b.WriteString(sc.Text())
	}
	return b.String()
}

func joinNames(entries []os.DirEntry) string {
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

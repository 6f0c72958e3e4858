package peercred

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ParseCgroup finds the kubelet pod (and container) that the contents of a /proc/<pid>/cgroup
// file place the process in, for a kubelet with the default --cgroup-root ("/"). ok is false if
// the process is in no pod cgroup, or if the file is ambiguous (lines naming different pods or
// containers) or malformed. See ParseCgroupUnder for a kubelet with another --cgroup-root.
//
// It reads cgroup v1 ("N:controllers:/path", one line per hierarchy), v2 ("0::/path") and
// both on a hybrid host, and the kubelet's two drivers:
//
//	cgroupfs: /kubepods[/besteffort|/burstable]/pod<uid>/<container>
//	systemd:  /kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/<rt>-<id>.scope
//
// where <container> is "<id>" or "crio-<id>", <rt> is cri-containerd, crio or docker, <id> is
// 64 hex digits, and the systemd driver writes the UID's dashes as underscores; podUID is
// always returned with dashes. A path seen from inside a cgroup namespace ("/../../burstable/
// pod<uid>/<id>") is read from where its "/.." steps end.
func ParseCgroup(content []byte) (podUID, containerID string, ok bool) {
	return ParseCgroupUnder(content, "/")
}

// ParseCgroupUnder is ParseCgroup for a kubelet run with --cgroup-root=cgroupRoot (for example
// "/kubelet.slice" with the systemd driver, "/kubelet" on Fedora, "/docker/<id>" on a kind node
// without a cgroup namespace).
func ParseCgroupUnder(content []byte, cgroupRoot string) (podUID, containerID string, ok bool) {
	podUID, containerID, err := parseCgroup(content, cgroupRoot)
	return podUID, containerID, err == nil
}

// errNoPod is parsePath's "outside the kubelet's pod tree".
var errNoPod = errors.New("no kubelet pod cgroup")

// notInPodError is parseCgroup's "in no pod cgroup", with the paths it read; the Resolver
// turns it into ErrNotInPod.
type notInPodError struct{ paths []string }

func (e *notInPodError) Error() string {
	return "no kubelet pod cgroup: " + strings.Join(e.paths, ", ")
}

// parseCgroup reads every line of a /proc/<pid>/cgroup file: "0::/path" (cgroup v2) and
// "N:controllers:/path" (cgroup v1, one line per hierarchy, both on a hybrid host).
//
// Which lines are trusted: every line is read the same way, and a line counts only if its path
// is a pod cgroup at the place the kubelet makes them (right under the cgroup root, or, in a
// cgroup namespace view, right where the "/.." steps end; see parsePath). Lines that name no pod
// are ignored: in v1 a controller the kubelet does not manage (or one the runtime left at "/")
// says nothing about the pod. Lines that name a pod must all name the same one, and the
// containers they name must agree, else the process is refused: only root on the node can put a
// process in two pods' cgroups, and we do not guess which one to believe. Anything below the
// container's own cgroup (a container with a delegated, writable cgroup subtree can make
// directories there, "kubepods/.../pod<other>" included) is never read.
func parseCgroup(content []byte, cgroupRoot string) (podUID, containerID string, err error) {
	root := splitPath(cgroupRoot)
	for _, c := range root {
		if c == ".." || c == "." {
			return "", "", fmt.Errorf("cgroup root %q is not a clean absolute path", cgroupRoot)
		}
	}
	var paths []string
	for len(content) > 0 {
		var line []byte
		line, content, _ = bytes.Cut(content, []byte("\n"))
		if len(line) == 0 {
			continue
		}
		// The kernel refuses '\n' in cgroup names, so a line is one cgroup; a name may hold ':'.
		id, rest, ok1 := strings.Cut(string(line), ":")
		_, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || id == "" || strings.Trim(id, "0123456789") != "" || !strings.HasPrefix(path, "/") {
			return "", "", fmt.Errorf("malformed cgroup line %q", line)
		}
		paths = append(paths, path)
		pod, cid, err := parsePath(path, root)
		switch {
		case errors.Is(err, errNoPod):
			continue
		case err != nil:
			return "", "", fmt.Errorf("cgroup %s: %w", path, err)
		case podUID != "" && pod != podUID:
			return "", "", fmt.Errorf("cgroup lines name two pods, %s and %s", podUID, pod)
		case containerID != "" && cid != "" && cid != containerID:
			return "", "", fmt.Errorf("cgroup lines name two containers, %s and %s", containerID, cid)
		}
		podUID = pod
		if cid != "" {
			containerID = cid
		}
	}
	if podUID == "" {
		if len(paths) == 0 {
			return "", "", errors.New("empty cgroup file")
		}
		return "", "", &notInPodError{paths: dedup(paths)}
	}
	return podUID, containerID, nil
}

// parsePath finds the pod in one cgroup path, for a kubelet with the given cgroup root
// (components). An absolute path must start with the root, followed by the kubelet's tree:
//
//	cgroupfs: kubepods[/besteffort|/burstable]/pod<uid>[/<container>[/...]]
//	systemd:  kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice[/<rt>-<id>.scope[/...]]
//
// (with a systemd root such as /kubelet.slice, the slices are named kubelet-kubepods...).
// A path that starts with "/.." is relative to the reader's cgroup namespace (a node agent in a
// container with a private cgroupns): it climbs from the agent's own cgroup to a common
// ancestor, which is the kubelet's (the agent runs in a pod), and then goes down. Its root
// cannot be checked, so it is read from where the steps end: kubepods, a QoS class or a pod.
// errNoPod means the path is outside the kubelet's pod tree; any other error means it is inside
// but not a well-formed pod cgroup (a look-alike).
func parsePath(path string, root []string) (podUID, containerID string, err error) {
	if strings.HasSuffix(path, " (deleted)") { // cgroup v2 marks a removed cgroup this way
		return "", "", errors.New("cgroup was removed")
	}
	comps := splitPath(path)
	up := 0
	for up < len(comps) && comps[up] == ".." {
		up++
	}
	relative := up > 0
	comps = comps[up:]
	for _, c := range comps {
		if c == ".." || c == "." {
			return "", "", errors.New("unexpected relative component")
		}
	}
	sliceBase := ""
	if !relative {
		if len(comps) < len(root) || !slices.Equal(comps[:len(root)], root) {
			return "", "", errNoPod
		}
		comps = comps[len(root):]
		if len(root) > 0 {
			sliceBase, _ = strings.CutSuffix(root[len(root)-1], ".slice")
		}
	}
	if len(comps) == 0 {
		return "", "", errNoPod
	}
	if strings.HasSuffix(comps[0], ".slice") {
		return parseSystemd(comps, relative, sliceBase)
	}
	return parseCgroupfs(comps, relative)
}

// parseCgroupfs reads the cgroupfs driver's tree from its first component. Under a kubepods
// component, a path that is not a well-formed pod cgroup is an error (a look-alike); in a
// relative view without one (the path starts at a QoS class or a pod) it is merely not a pod.
func parseCgroupfs(comps []string, relative bool) (podUID, containerID string, err error) {
	anchored := comps[0] == "kubepods"
	if !anchored && !relative {
		return "", "", errNoPod
	}
	malformed := func(format string, args ...any) error {
		if !anchored {
			return errNoPod
		}
		return fmt.Errorf(format, args...)
	}
	i := 0
	if anchored {
		i = 1
	}
	if i < len(comps) && isQoS(comps[i]) {
		i++
	}
	if i == len(comps) {
		return "", "", errNoPod // the kubepods or QoS cgroup itself holds no pod's processes
	}
	uid, ok := strings.CutPrefix(comps[i], "pod")
	if !ok {
		return "", "", malformed("%q under kubepods is not a pod cgroup", comps[i])
	}
	podUID, ok = podUIDFrom(uid, '-')
	if !ok {
		return "", "", malformed("%q is not a pod UID", uid)
	}
	if i+1 < len(comps) {
		containerID = containerIDFrom(comps[i+1])
	}
	return podUID, containerID, nil
}

// parseSystemd reads the systemd driver's tree, where every slice's name repeats its parent's
// and adds one dash-separated element: kubepods, then the QoS class, then pod<uid>.
func parseSystemd(comps []string, relative bool, rootSliceBase string) (podUID, containerID string, err error) {
	name := strings.TrimSuffix(comps[0], ".slice")
	elems := strings.Split(name, "-")
	k := -1
	for j, e := range elems {
		if e == "kubepods" {
			k = j
			break
		}
	}
	if k < 0 {
		return "", "", errNoPod
	}
	if !relative {
		want := "kubepods"
		if rootSliceBase != "" {
			want = rootSliceBase + "-kubepods"
		}
		if strings.Join(elems[:k+1], "-") != want {
			return "", "", errNoPod
		}
	}
	rest := elems[k+1:]
	j := 0
	for len(rest) == 0 || (len(rest) == 1 && isQoS(rest[0])) {
		j++
		if j == len(comps) {
			return "", "", errNoPod // the kubepods or QoS slice itself
		}
		next, ok := strings.CutSuffix(comps[j], ".slice")
		add, ok2 := strings.CutPrefix(next, name+"-")
		if !ok || !ok2 || add == "" || strings.Contains(add, "-") {
			return "", "", fmt.Errorf("%q under %s.slice is not a kubelet slice", comps[j], name)
		}
		rest, name = append(rest, add), next
	}
	if len(rest) == 2 && isQoS(rest[0]) {
		rest = rest[1:]
	}
	uid, ok := strings.CutPrefix(rest[0], "pod")
	if len(rest) != 1 || !ok {
		return "", "", fmt.Errorf("%q is not a kubelet pod slice", comps[j])
	}
	podUID, ok = podUIDFrom(uid, '_') // systemd escapes '-' (its hierarchy separator) as '_'
	if !ok {
		return "", "", fmt.Errorf("%q is not a pod UID", uid)
	}
	if j+1 < len(comps) {
		if scope, ok := strings.CutSuffix(comps[j+1], ".scope"); ok {
			containerID = containerIDFrom(scope)
		}
	}
	return podUID, containerID, nil
}

// containerIDFrom returns the container ID a runtime named a container's cgroup after:
// "<id>" (containerd and Docker with cgroupfs), "crio-<id>", "cri-containerd-<id>",
// "docker-<id>" (scopes with systemd, the ".scope" cut off). Anything else in a pod cgroup
// (CRI-O's "crio-conmon-<id>" monitor, a runtime we do not know) is in the pod but in no
// container: "".
func containerIDFrom(name string) string {
	for _, prefix := range []string{"", "cri-containerd-", "crio-", "docker-"} {
		if id, ok := strings.CutPrefix(name, prefix); ok && isHex(id, 64) {
			return id
		}
	}
	return ""
}

// podUIDFrom checks a pod UID in the form 8-4-4-4-12 lower-case hex digits with sep between
// groups and returns it with dashes. Static pods' UIDs (a 32-digit hash with no dashes) are
// refused: their API mirror pods carry another UID, so they could not be matched anyway.
func podUIDFrom(s string, sep byte) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	b := []byte(s)
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != sep {
				return "", false
			}
			b[i] = '-'
		default:
			if !isHexDigit(c) {
				return "", false
			}
		}
	}
	return string(b), true
}

func isQoS(s string) bool { return s == "besteffort" || s == "burstable" }

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := range len(s) {
		if !isHexDigit(s[i]) {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

func splitPath(p string) []string {
	var comps []string
	for c := range strings.SplitSeq(p, "/") {
		if c != "" {
			comps = append(comps, c)
		}
	}
	return comps
}

func dedup(s []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

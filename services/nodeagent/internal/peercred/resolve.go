package peercred

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Creds is what the kernel says about the process that connected.
type Creds struct {
	PID       int32
	UID, GID  uint32
	StartTime uint64 // field 22 of /proc/<pid>/stat (clock ticks since boot), read at accept
	// PIDFDIno is the pidfs inode number of the connecting process (from SO_PEERPIDFD, Linux
	// 6.9+), unique for the boot: it tells apart two processes that had the same pid in the
	// same clock tick, which StartTime cannot. 0 if the kernel has no pidfs.
	PIDFDIno uint64
}

// Process is a resolved caller.
type Process struct {
	Creds
	PodUID      string // "" if not in a pod
	ContainerID string // "" if the cgroup path carries none
}

var (
	// ErrNotInPod: the process is in no kubelet pod cgroup. The error returned wraps it and
	// names the process's cgroup paths. Only this error may send a caller to a host allow-list.
	ErrNotInPod = errors.New("process is in no kubelet pod cgroup")
	// ErrProcessChanged: the pid exited, or was reused by another process, between accept and
	// resolution. The caller must be refused: that race is the attack.
	ErrProcessChanged = errors.New("peer process exited or its pid was reused since it connected")
	// ErrBadCgroup: the process's cgroups name two pods or containers, or sit in the kubelet's
	// pod tree without being a well-formed pod cgroup (a look-alike). Refuse.
	ErrBadCgroup = errors.New("peer cgroup membership is conflicting or malformed")
	// ErrPIDNotVisible: SO_PEERCRED reported pid 0, meaning the peer is in a pid namespace
	// the agent cannot see (the agent needs hostPID).
	ErrPIDNotVisible = errors.New("peer pid is not visible in this pid namespace (does the agent run with hostPID?)")
)

// Resolver maps a connected process to its pod through procfs. Its zero value reads /proc for
// a kubelet with the default --cgroup-root. It is safe for concurrent use and holds no cache:
// every Resolve reads /proc again, because a process can be moved to another cgroup.
type Resolver struct {
	ProcRoot string // "/proc" by default
	// CgroupRoot is the kubelet's --cgroup-root ("/" by default). Absolute cgroup paths must
	// start with it, so a cgroup named "kubepods/.../pod<uid>" elsewhere (a user's delegated
	// systemd subtree, say) is not taken for a pod.
	CgroupRoot string

	// afterCgroupRead, if set, runs between reading the cgroup file and re-reading the start
	// time: tests use it to exit or replace the process at the worst moment.
	afterCgroupRead func(Creds)
}

// Resolve reads <ProcRoot>/<pid>/cgroup and parses it, then re-reads the pid's start time and
// compares it with c.StartTime: if the process is gone, a zombie, or another process now has
// the pid, the cgroup read may be someone else's and Resolve returns ErrProcessChanged. With
// c.PIDFDIno set, it also holds a pidfd of the pid across the reads and checks that it names
// that process (before) and that the process is alive (after): this catches a pid reused
// within the start time's clock tick.
//
// On error the returned Process still carries c (for logs and a uid allow-list), never a pod.
// Errors wrap ErrNotInPod, ErrProcessChanged, ErrBadCgroup, ErrPIDNotVisible, or are I/O
// failures of /proc.
func (r *Resolver) Resolve(c Creds) (Process, error) {
	p := Process{Creds: c}
	if c.PID <= 0 {
		return p, ErrPIDNotVisible
	}
	pidfd, err := openSameProcess(c)
	if err != nil {
		return p, err
	}
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	content, err := os.ReadFile(filepath.Join(r.procRoot(), strconv.Itoa(int(c.PID)), "cgroup"))
	if err != nil {
		return p, procError(c.PID, "reading cgroup", err)
	}
	if r.afterCgroupRead != nil {
		r.afterCgroupRead(c)
	}
	if err := r.checkSameProcess(c); err != nil {
		return p, err
	}
	if pidfd >= 0 && !pidfdAlive(pidfd) {
		return p, fmt.Errorf("pid %d: %w (it exited while being resolved)", c.PID, ErrProcessChanged)
	}
	root := r.CgroupRoot
	if root == "" {
		root = "/"
	}
	pod, cid, err := parseCgroup(content, root)
	var notInPod *notInPodError
	switch {
	case errors.As(err, &notInPod):
		return p, fmt.Errorf("pid %d: %w (cgroup %s)", c.PID, ErrNotInPod, strings.Join(notInPod.paths, ", "))
	case err != nil:
		return p, fmt.Errorf("pid %d: %w: %v", c.PID, ErrBadCgroup, err)
	}
	p.PodUID, p.ContainerID = pod, cid
	return p, nil
}

// checkSameProcess re-reads the start time of c.PID and fails with ErrProcessChanged unless the
// same, still running process holds it.
func (r *Resolver) checkSameProcess(c Creds) error {
	st, err := r.readStat(c.PID)
	if err != nil {
		return err
	}
	if st.startTime != c.StartTime {
		return fmt.Errorf("pid %d: %w (start time %d at accept, %d now)", c.PID, ErrProcessChanged, c.StartTime, st.startTime)
	}
	if st.state == 'Z' || st.state == 'X' {
		return fmt.Errorf("pid %d: %w (it has exited)", c.PID, ErrProcessChanged)
	}
	return nil
}

// StartTime reads field 22 of <ProcRoot>/<pid>/stat. A pid that no longer exists gives
// ErrProcessChanged.
func (r *Resolver) StartTime(pid int32) (uint64, error) {
	st, err := r.readStat(pid)
	return st.startTime, err
}

type procStat struct {
	state     byte
	startTime uint64
}

func (r *Resolver) readStat(pid int32) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(r.procRoot(), strconv.Itoa(int(pid)), "stat"))
	if err != nil {
		return procStat{}, procError(pid, "reading stat", err)
	}
	st, err := parseStat(b)
	if err != nil {
		return procStat{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st, nil
}

// parseStat reads the state (field 3) and start time (field 22) of a /proc/<pid>/stat line.
// Field 2, the command name in parentheses, may itself hold spaces and ')': the fields after it
// start after the last ')'.
func parseStat(b []byte) (procStat, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procStat{}, errors.New("malformed stat: no command name")
	}
	fields := bytes.Fields(b[end+1:])
	const stateField, startField = 3, 22 // 1-based, as in proc(5)
	if len(fields) <= startField-stateField || len(fields[0]) != 1 {
		return procStat{}, errors.New("malformed stat: too few fields")
	}
	start, err := strconv.ParseUint(string(fields[startField-stateField]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed stat start time: %w", err)
	}
	return procStat{state: fields[0][0], startTime: start}, nil
}

// procError maps "the /proc entry is gone" to ErrProcessChanged; a process that exits while
// its file is open gives ESRCH on read.
func procError(pid int32, what string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pid %d: %w (%s: %v)", pid, ErrProcessChanged, what, err)
	}
	return fmt.Errorf("pid %d: %s: %w", pid, what, err)
}

func (r *Resolver) procRoot() string {
	if r.ProcRoot == "" {
		return "/proc"
	}
	return r.ProcRoot
}

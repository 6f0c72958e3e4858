package csi

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// bindReadOnly bind-mounts source at target, read-only, without devices, setuid or exec. A
// read-only mount still lets a pod connect to the socket in it: connect(2) needs write
// permission on the socket inode, which a read-only mount does not take away (only regular
// files, directories and symlinks are refused writes there), while the pod can neither replace
// the socket nor fill the node's disk through the directory.
// TestPublishedSocketIsReadOnlyButConnectable checks both. The pod's volume is read-only too
// (publish refuses one that is not), so the kubelet does not try to relabel it for SELinux,
// which would fail here; SPIFFE's CSI driver users hit exactly that on SELinux nodes.
func bindReadOnly(source, target string) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s at %s: %w", source, target, err)
	}
	// The flags of a bind mount are only set by a remount.
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("making %s read-only: %w", target, err)
	}
	return nil
}

// unmountAll unmounts target until nothing is mounted there: "not mounted" and "gone" are success,
// because the kubelet retries an unpublish that failed after the unmount.
func unmountAll(target string) error {
	for range 10 { // a mount stacked by an older agent's half-done publish is unmounted too
		mounted, err := isMountPoint(target)
		if err != nil || !mounted {
			return err
		}
		if err := unix.Unmount(target, 0); err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				return nil
			}
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
	return fmt.Errorf("%s is still mounted after 10 unmounts", target)
}

// isMountPoint reports whether a mount of this mount namespace has path as its mount point.
// The target paths the kubelet gives are node paths: the agent sees them at the same path (the
// chart mounts the kubelet's directory at its own path).
func isMountPoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("reading mounts: %w", err)
	}
	return false, nil
}

// unescapeMountinfo undoes the kernel's octal escapes of space, tab, newline and backslash.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

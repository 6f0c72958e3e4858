package peercred

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// A pid and its start time do not name a process for sure: the start time is in clock ticks
// (10 ms), so a pid reused within one tick looks the same. Since Linux 6.9 a pidfd is a file
// of pidfs whose inode number names one process for the whole boot, never reused; the
// handshake records it (from SO_PEERPIDFD, the process that called connect) and Resolve checks
// that the pid still names that process before it reads /proc, and that the process still
// lives after.

// pidfsMagic is PIDFS_MAGIC, the file system type of a pidfd since Linux 6.9.
const pidfsMagic = 0x50494446

// pidfdIno returns the pidfs inode number of pidfd, or 0 if pidfds are not pidfs files (before
// Linux 6.9 they all share one anonymous inode).
func pidfdIno(pidfd int) uint64 {
	var fs unix.Statfs_t
	if unix.Fstatfs(pidfd, &fs) != nil || fs.Type != pidfsMagic {
		return 0
	}
	var st unix.Stat_t
	if unix.Fstat(pidfd, &st) != nil {
		return 0
	}
	return st.Ino
}

// openSameProcess opens a pidfd for c.PID and checks it names the process c describes. With
// no PIDFDIno to compare, it returns -1 and no error: only the start time can be checked.
func openSameProcess(c Creds) (int, error) {
	if c.PIDFDIno == 0 {
		return -1, nil
	}
	pidfd, err := unix.PidfdOpen(int(c.PID), 0)
	if errors.Is(err, unix.ESRCH) {
		return -1, fmt.Errorf("pid %d: %w (no such process)", c.PID, ErrProcessChanged)
	}
	if err != nil {
		return -1, fmt.Errorf("pid %d: pidfd_open: %w", c.PID, err)
	}
	if ino := pidfdIno(pidfd); ino != c.PIDFDIno {
		unix.Close(pidfd)
		return -1, fmt.Errorf("pid %d: %w (pidfs inode %d now, %d recorded)", c.PID, ErrProcessChanged, ino, c.PIDFDIno)
	}
	return pidfd, nil
}

// pidfdAlive reports whether the process behind pidfd still exists (a zombie counts: it still
// holds its pid). Signal 0 checks existence only; EPERM (an agent that is not root asking
// about another user's process) also proves it exists, so no capability is needed.
func pidfdAlive(pidfd int) bool {
	err := unix.PidfdSendSignal(pidfd, 0, nil, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// Package peercred attests the process on the other end of the node agent's Unix socket from
// what the kernel says about it, so a sidecar that cannot send a token (Envoy without call
// credentials, MOSN) can still be told apart from its neighbours.
//
// # What the kernel proves
//
// SO_PEERCRED gives the pid, uid and gid of the process that called connect(), recorded by the
// kernel at that moment; the peer cannot forge them. They describe the connecting process at
// connect time, not whoever uses the connection later. The pid is then mapped to a pod through
// /proc/<pid>/cgroup: the kubelet puts every pod's processes in a cgroup whose path carries
// the pod UID (and the runtime adds one per container), and a process in a pod cannot move out
// of its cgroup, because the cgroup filesystem is read-only in the container and writing
// another cgroup's cgroup.procs needs root on the node. See ParseCgroup for the layouts read
// (cgroup v1 and v2, cgroupfs and systemd drivers, cgroup namespaces, --cgroup-root).
//
// # Why the start time is checked again
//
// A pid is only a number. Between accept and the /proc reads the caller can exit and its pid
// can be given to a new process, perhaps in another pod (pids wrap: pid_max is often 32768),
// and the reads would describe that process. So the handshake records the pid's start time
// (field 22 of /proc/<pid>/stat, fixed for a process's life) at accept, and Resolve reads it
// again after reading the cgroup: a different value, or no process, or a zombie, means the
// cgroup just read may not be the caller's, and the caller is refused with ErrProcessChanged.
//
// The start time has two gaps. It is in clock ticks (10 ms), so a pid reused within the tick
// looks the same (the tests force exactly that with ns_last_pid); and it is read at accept, so
// a caller that exits after connect() and whose pid is reused before accept is never seen at
// all. Both are closed where the kernel allows: SO_PEERPIDFD (Linux 6.5+) gives a pidfd of the
// process that called connect(), and since Linux 6.9 a pidfd's pidfs inode number names one
// process for the whole boot. The handshake records it (Creds.PIDFDIno); Resolve opens a pidfd
// for the pid, checks that it has that inode (the pid still names the caller) before reading
// /proc, and that the process is still alive after, so every read was the caller's own. On
// 6.5 to 6.8 the handshake checks that its pidfd is alive after resolving, which closes the
// connect-accept window but not the same-tick one. Before 6.5 only the start time remains.
//
// The result is computed once per connection, in the gRPC handshake (TransportCredentials),
// and kept in the connection's AuthInfo, so FromContext in a handler reads nothing.
//
// # What the agent needs
//
// hostPID: SO_PEERCRED gives the pid in the reader's pid namespace, and is 0 for a peer in a
// namespace the agent cannot see (every pod's); and /proc must be the host's to find the
// peer's files. No capability: SO_PEERCRED and SO_PEERPIDFD need none, and /proc/<pid>/stat and
// /proc/<pid>/cgroup are world-readable (mode 0444, readable by uid 65534 for a root process:
// checked on Linux 6.18), unlike environ or fd/. Only hidepid= hides them: the runtime mounts
// the agent's /proc without it, and since Linux 5.8 each procfs mount has its own options (on
// older kernels a host /proc with hidepid= would hide them from the agent too). The
// liveness check of a pidfd sends signal 0, whose EPERM is taken as "alive", so no CAP_KILL
// either. The agent can run as a non-root user.
//
// # What this does not protect against
//
//   - A process in a pod handing its connected socket to another process (SCM_RIGHTS, or a
//     child inheriting it): the connection still says who connected. The pod chose to share
//     its identity; it could as well have shared its certificate.
//   - Root on the node (or a privileged pod, or one with CAP_SYS_ADMIN and a writable cgroupfs):
//     it can move any process into any pod's cgroup, read any key from memory, or replace the
//     agent. Nothing on the node can be trusted against it.
//   - A pod is identified, not a binary: every process in the pod's cgroups is that pod. The
//     container ID says which container, where the runtime names its cgroups after it.
//   - A static pod's cgroup carries its config hash, not the UID of its mirror pod in the API,
//     and is not resolved.
package peercred

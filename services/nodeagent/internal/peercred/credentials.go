package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthType is AuthInfo's AuthType.
const AuthType = "peercred"

// AuthInfo is what the handshake learnt about the process on the other end of a connection.
// It is resolved once per connection, in the handshake: Process and Err are the result of
// Resolver.Resolve, checked once more against the kernel's pidfd of the connecting process
// where the kernel has SO_PEERPIDFD. A connection that cannot be resolved is still accepted
// (a caller with a token may not need its pod); the verdict travels in Err.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Creds   Creds
	Process Process // PodUID and ContainerID only when Err is nil
	Err     error
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return AuthType }

// ErrNoPeerCreds: the context carries no peercred AuthInfo (the gRPC server does not use
// TransportCredentials, or the context is not a handler's).
var ErrNoPeerCreds = errors.New("no peer credentials on this connection")

// FromContext returns the caller of a gRPC handler, as resolved by the handshake of its
// connection. It reads no file: the result was computed once per connection. On error the
// Process carries the Creds alone (pid, uid, gid, start time; useful for logs and for a uid
// allow-list when the error is ErrNotInPod) and must not be taken for a pod.
//
// The answer is about the process at connection time: a long-lived stream is not re-resolved
// if its process is later moved to another cgroup (only root on the node can do that).
func FromContext(ctx context.Context) (Process, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Process{}, ErrNoPeerCreds
	}
	info, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return Process{}, fmt.Errorf("%w: auth type %q", ErrNoPeerCreds, p.AuthInfo.AuthType())
	}
	if info.Err != nil {
		return Process{Creds: info.Creds}, info.Err
	}
	return info.Process, nil
}

// TransportCredentials returns gRPC server credentials for a Unix listener. ServerHandshake
// reads SO_PEERCRED and the pid's start time from <ProcRoot>/<pid>/stat, resolves the pid
// (r.Resolve) and returns an AuthInfo with the result. Connections that are not Unix stream
// sockets are refused. A nil r is a zero Resolver.
func TransportCredentials(r *Resolver) credentials.TransportCredentials {
	if r == nil {
		r = &Resolver{}
	}
	return &transportCreds{r: r}
}

type transportCreds struct{ r *Resolver }

var errClientSide = errors.New("peercred credentials are for servers only")

func (t *transportCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errClientSide
}

func (t *transportCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info, err := t.r.handshake(conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, info, nil
}

func (t *transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

func (t *transportCreds) Clone() credentials.TransportCredentials {
	return &transportCreds{r: t.r}
}

func (t *transportCreds) OverrideServerName(string) error { return nil }

// handshake takes the peer's credentials from the kernel and resolves them. Its error is for
// connections that carry no peer credentials at all (not a Unix socket); anything about the
// process goes in AuthInfo.Err.
func (r *Resolver) handshake(conn net.Conn) (AuthInfo, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok || conn.LocalAddr().Network() != "unix" {
		return AuthInfo{}, fmt.Errorf("peercred: refusing %s connection: only Unix sockets carry peer credentials", conn.LocalAddr().Network())
	}
	ucred, pidfd, err := peerCreds(sc)
	if err != nil {
		return AuthInfo{}, err
	}
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	info := AuthInfo{
		// Like gRPC's local credentials: a Unix socket never leaves the host.
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Creds:          Creds{PID: ucred.Pid, UID: ucred.Uid, GID: ucred.Gid},
	}
	if pidfd >= 0 {
		info.Creds.PIDFDIno = pidfdIno(pidfd)
	}
	if pidfd == pidfdGone {
		info.Err = fmt.Errorf("pid %d: %w (gone before accept)", ucred.Pid, ErrProcessChanged)
		info.Process = Process{Creds: info.Creds}
		return info, nil
	}
	if ucred.Pid > 0 {
		info.Creds.StartTime, info.Err = r.StartTime(ucred.Pid)
	}
	if info.Err == nil {
		info.Process, info.Err = r.Resolve(info.Creds)
	}
	// The pidfd names the process that called connect(), not whoever has its pid now. If it
	// is still alive after every /proc read, those reads were its own: this closes the window
	// between connect and accept, which the start time alone cannot (it is read at accept).
	// With pidfs (Linux 6.9+) Resolve already checked it through PIDFDIno; before, this is the
	// check.
	if info.Err == nil && pidfd >= 0 && !pidfdAlive(pidfd) {
		info.Err = fmt.Errorf("pid %d: %w (the connecting process exited during attestation)", ucred.Pid, ErrProcessChanged)
	}
	if info.Err != nil {
		info.Process = Process{Creds: info.Creds}
	}
	return info, nil
}

// pidfdGone is peerCreds' pidfd when the kernel has SO_PEERPIDFD but the peer has no process
// any more; -1 means the kernel has no SO_PEERPIDFD (before Linux 6.5).
const pidfdGone = -2

// peerCreds reads SO_PEERCRED and, where the kernel has it, SO_PEERPIDFD: both are recorded by
// the kernel when the peer called connect(), and need no capability.
func peerCreds(sc syscall.Conn) (ucred *unix.Ucred, pidfd int, err error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, -1, fmt.Errorf("peercred: %w", err)
	}
	var uerr, perr error
	pidfd = -1
	cerr := rc.Control(func(fd uintptr) {
		ucred, uerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if uerr == nil {
			pidfd, perr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		}
	})
	switch {
	case cerr != nil:
		return nil, -1, fmt.Errorf("peercred: %w", cerr)
	case uerr != nil:
		return nil, -1, fmt.Errorf("peercred: SO_PEERCRED: %w", uerr)
	case errors.Is(perr, unix.ENOPROTOOPT):
		return ucred, -1, nil
	case errors.Is(perr, unix.ESRCH) || errors.Is(perr, unix.EINVAL):
		return ucred, pidfdGone, nil // the peer process is gone: there is nothing to point at
	case perr != nil:
		return nil, -1, fmt.Errorf("peercred: SO_PEERPIDFD: %w", perr)
	}
	return ucred, pidfd, nil
}

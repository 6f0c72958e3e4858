package peercred

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// recordingHealth answers Health.Check and reports what FromContext said about the caller.
type recordingHealth struct {
	healthpb.UnimplementedHealthServer
	seen chan callerInfo
}

type callerInfo struct {
	p   Process
	err error
}

func (h *recordingHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	p, err := FromContext(ctx)
	h.seen <- callerInfo{p, err}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// socketPath returns a socket path in a fresh directory any user can reach (t.TempDir's
// parent is 0700, which a helper that dropped to nobody could not cross).
func socketPath(t testing.TB) string {
	dir, err := os.MkdirTemp("", "peercred")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "socket")
}

// serveGRPC runs a gRPC server with the peer credentials on a fresh Unix socket.
func serveGRPC(t testing.TB, r *Resolver) (path string, seen chan callerInfo) {
	path = socketPath(t)
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	seen = make(chan callerInfo, 1)
	srv := grpc.NewServer(grpc.Creds(TransportCredentials(r)))
	healthpb.RegisterHealthServer(srv, &recordingHealth{seen: seen})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return path, seen
}

// TestGRPCPeerCredentials: a real gRPC server on a real Unix socket, called by real processes;
// the handler sees each caller's pid, uid, gid, start time and pod.
func TestGRPCPeerCredentials(t *testing.T) {
	cg := newTestCgroups(t)
	pod, cid := newPodUID(), newContainerID()
	dir := cg.pod(t, "pids", "burstable", pod, cid)
	path, seen := serveGRPC(t, &Resolver{CgroupRoot: cg.root})

	// A host process that is not root: not in a pod, but its credentials are all there.
	c := startChild(t, "grpc", "PEERCRED_SOCKET="+path, "PEERCRED_UID=65534", "PEERCRED_GID=65533")
	c.stdin.Write([]byte("go\n"))
	c.expect(t, "ok")
	got := <-seen
	if !errors.Is(got.err, ErrNotInPod) {
		t.Fatalf("host process: %v, want ErrNotInPod", got.err)
	}
	want := Creds{PID: c.pid(), UID: 65534, GID: 65533, StartTime: startTimeOf(t, c.pid())}
	if got.p.PIDFDIno == 0 {
		t.Error("no pidfs inode recorded (SO_PEERPIDFD on Linux 6.9+)")
	}
	if gotCreds := startTimeOnly(got.p.Creds); gotCreds != want || got.p.PodUID != "" {
		t.Fatalf("handler saw %+v, want creds %+v", got.p, want)
	}
	t.Logf("host process: %+v: %v", got.p.Creds, got.err)
	c.stop(t)

	// A process in a pod's cgroup when it connects.
	c = startChild(t, "grpc", "PEERCRED_SOCKET="+path)
	move(t, dir, c.pid())
	c.stdin.Write([]byte("go\n"))
	c.expect(t, "ok")
	got = <-seen
	want = Creds{PID: c.pid(), StartTime: startTimeOf(t, c.pid())}
	if got.err != nil || got.p.PodUID != pod || got.p.ContainerID != cid || startTimeOnly(got.p.Creds) != want {
		t.Fatalf("pod process: %+v, %v; want pod %s container %s creds %+v", got.p, got.err, pod, cid, want)
	}
	c.stop(t)
}

// TestHandshakeConnectAcceptRace: process A (pod A) connects and exits before the agent
// accepts, and its pid goes to B in pod B. At accept the pid, its start time and its cgroup
// are all B's; only the pidfd that the kernel recorded at connect (SO_PEERPIDFD) says that
// the caller was A, and is gone.
func TestHandshakeConnectAcceptRace(t *testing.T) {
	cg := newTestCgroups(t)
	podA, podB := newPodUID(), newPodUID()
	dirA := cg.pod(t, "unified", "besteffort", podA, newContainerID())
	dirB := cg.pod(t, "unified", "besteffort", podB, newContainerID())
	r := &Resolver{CgroupRoot: cg.root}
	path := socketPath(t)
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accept := func() AuthInfo {
		t.Helper()
		conn, err := lis.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, info, err := TransportCredentials(r).ServerHandshake(conn)
		if err != nil {
			t.Fatal(err)
		}
		return info.(AuthInfo)
	}

	// First, a caller that stays: resolved to its pod.
	a := startChild(t, "dial", "PEERCRED_SOCKET="+path)
	move(t, dirA, a.pid())
	a.expect(t, "ok")
	if info := accept(); info.Err != nil || info.Process.PodUID != podA {
		t.Fatalf("live caller: %+v", info)
	}
	a.stop(t)

	a = startChild(t, "dial", "PEERCRED_SOCKET="+path)
	move(t, dirA, a.pid())
	a.expect(t, "ok") // connected, not yet accepted
	a.stop(t)         // exited and reaped
	b := startChildWithPID(t, a.pid())
	move(t, dirB, b.pid())
	info := accept()
	if !errors.Is(info.Err, ErrProcessChanged) || info.Process.PodUID != "" || info.Creds.PID != b.pid() {
		t.Fatalf("caller gone before accept, pid now in pod B: %+v; want ErrProcessChanged", info)
	}
	t.Logf("refused: %v", info.Err)
}

func TestHandshakeRefusesTCP(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, err := TransportCredentials(nil).ServerHandshake(conn); err == nil {
		t.Fatal("a TCP connection was accepted")
	}
	if _, _, err := TransportCredentials(nil).ClientHandshake(context.Background(), "x", client); err == nil {
		t.Fatal("client handshake accepted")
	}
}

func TestFromContextWithoutPeerCreds(t *testing.T) {
	if _, err := FromContext(context.Background()); !errors.Is(err, ErrNoPeerCreds) {
		t.Fatalf("no peer: %v", err)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{})
	if _, err := FromContext(ctx); !errors.Is(err, ErrNoPeerCreds) {
		t.Fatalf("peer without auth info: %v", err)
	}
}

package app

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/csi"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/peercred"
)

// The agent's gRPC server answers on every pod's socket, those published before it could serve
// and after, and a caller there is that pod (identity.Peer.SocketPod, from the connection's
// local address); on any other socket, only its peer credentials say who it is.
func TestPodSocketsServeAndNameThePod(t *testing.T) {
	defer goleak.VerifyNone(t)
	var (
		mu   sync.Mutex
		seen []identity.Peer
	)
	sockets := &podSockets{log: slog.New(slog.DiscardHandler), byUID: map[string]podSocket{}}
	// What the peer credentials said; the per-pod socket adds the pod.
	peerOf := (&csiPlugin{sockets: sockets}).peer(func(context.Context) identity.Peer { return identity.Peer{PID: 42} })
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		mu.Lock()
		seen = append(seen, peerOf(ctx))
		mu.Unlock()
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	defer srv.Stop()
	// The Workload API's HTTP form, served on a second socket next to each pod's.
	httpSrv := &http.Server{ConnContext: peercred.ConnContext(nil), ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, peerOf(r.Context()))
			mu.Unlock()
		})}
	defer httpSrv.Close()

	dir := t.TempDir()
	pods := []csi.PodInfo{
		{Namespace: "shop", Name: "web-0", UID: "0b4f6f2e-5d1c-4e0a-9d55-0c1f6a7e9b01", ServiceAccount: "web"},
		{Namespace: "shop", Name: "cart-0", UID: "7c9e6679-7425-40de-944b-e07fc1f90ae7", ServiceAccount: "cart"},
	}
	paths := make([]string, len(pods))
	for i, pod := range pods {
		if i == 1 {
			// The first socket was published before the agent could serve (it was attesting).
			sockets.serve(srv, httpSrv)
		}
		// Each pod's socket in a directory of its own, as the CSI driver makes them.
		if err := os.Mkdir(filepath.Join(dir, pod.Name), 0o750); err != nil {
			t.Fatal(err)
		}
		paths[i] = filepath.Join(dir, pod.Name, "socket")
		if err := sockets.OpenPodSocket(pod, paths[i]); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(paths[i]); err != nil || fi.Mode().Perm() != 0o666 {
			t.Fatalf("%s: %v (%v), want mode 0666", paths[i], fi.Mode(), err)
		}
	}
	for i, path := range paths {
		want := attestedpod.Ref{Namespace: pods[i].Namespace, Name: pods[i].Name, UID: pods[i].UID}
		for _, call := range []func(string) error{healthCheck, httpCheck} {
			if err := call(path); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			got := seen[len(seen)-1]
			mu.Unlock()
			if got.SocketPod == nil || *got.SocketPod != want || got.PID != 42 {
				t.Errorf("call on %s: handler saw %+v, want socket pod %+v and the peer credentials", path, got, want)
			}
		}
	}

	// A connection on a socket that is no pod's (the node's shared one) names no pod.
	shared := filepath.Join(dir, "shared.sock")
	lis, err := net.Listen("unix", shared)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	if err := healthCheck(shared); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if got := seen[len(seen)-1]; got.SocketPod != nil || got.PID != 42 {
		t.Errorf("call on the shared socket: handler saw %+v, want only the peer credentials", got)
	}
	mu.Unlock()

	if err := sockets.ClosePodSocket(pods[0].UID); err != nil {
		t.Fatal(err)
	}
	if err := sockets.ClosePodSocket(pods[0].UID); err != nil { // closed already: nil
		t.Fatal(err)
	}
	if err := healthCheck(paths[0]); err == nil {
		t.Error("a closed pod socket still answers")
	}
	if err := httpCheck(paths[0]); err == nil {
		t.Error("a closed pod's http socket still answers")
	}
	if _, ok := sockets.Pod(paths[0]); ok {
		t.Error("Pod still knows the closed socket")
	}
	if err := healthCheck(paths[1]); err != nil {
		t.Errorf("the other pod's socket after a close: %v", err)
	}
}

func healthCheck(path string) error {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// httpCheck makes an HTTP request on the HTTP socket next to the pod socket at path.
func httpCheck(path string) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", httpSocketPath(path))
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://pod/")
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

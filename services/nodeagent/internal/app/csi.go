package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	grpcpeer "google.golang.org/grpc/peer"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/csi"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// csiPlugin is the agent's CSI driver and the pods' sockets it publishes; nil with CSI off.
type csiPlugin struct {
	sockets *podSockets
	driver  *csi.Driver
}

// startCSI runs the CSI driver in g when -csi-endpoint is set. It needs no identity, so it starts
// before the agent attests: pods can mount their sockets meanwhile, and their connections wait
// for serve.
func (a *App) startCSI(ctx context.Context, g *errgroup.Group) (*csiPlugin, error) {
	if !a.cfg.CSI.Enabled() {
		return nil, nil
	}
	sockets := &podSockets{log: a.logger, byUID: map[string]podSocket{}}
	driver, err := csi.New(csi.Config{
		DriverName: a.cfg.CSI.DriverName, NodeName: a.cfg.NodeName, Endpoint: a.cfg.CSI.Endpoint,
		RegistrationDir: a.cfg.CSI.RegistrationDir, StateDir: a.cfg.CSI.State(), TokenAudience: a.cfg.Audiences()[0],
		Publisher: sockets, Logger: a.logger,
	})
	if err != nil {
		return nil, err
	}
	g.Go(func() error { return driver.Run(ctx) })
	return &csiPlugin{sockets: sockets, driver: driver}, nil
}

// serve has srv answer on every pod's socket, open and to come.
func (c *csiPlugin) serve(srv *grpc.Server) {
	if c != nil {
		c.sockets.serve(srv)
	}
}

// peer wraps next (what a connection's peer credentials say): a caller on a pod's own socket is
// that pod, whichever process it is and whatever its cgroup, with no /proc lookup
// (identity.Peer.SocketPod). The peer credentials stay for the logs.
func (c *csiPlugin) peer(next func(context.Context) identity.Peer) func(context.Context) identity.Peer {
	if c == nil {
		return next
	}
	return func(ctx context.Context) identity.Peer {
		p := next(ctx)
		if conn, ok := grpcpeer.FromContext(ctx); ok && conn.LocalAddr != nil {
			if pod, ok := c.sockets.Pod(conn.LocalAddr.String()); ok {
				p.SocketPod = &attestedpod.Ref{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}
			}
		}
		return p
	}
}

// ready is nil once the kubelet has registered the driver (always with CSI off).
func (c *csiPlugin) ready() error {
	if c == nil {
		return nil
	}
	return c.driver.Ready()
}

// podSockets is the agent's csi.Publisher: it serves the agent's gRPC server on each pod's own
// socket and knows which pod each socket is for. A connection's local address (peer.LocalAddr
// in a gRPC handler) is the socket's path: Pod turns it into the pod.
type podSockets struct {
	log *slog.Logger

	mu sync.Mutex
	// srv is nil until the agent can serve; sockets opened before wait for it (their
	// connections queue in the listen backlog).
	srv   *grpc.Server
	byUID map[string]podSocket
}

type podSocket struct {
	pod csi.PodInfo
	lis net.Listener
}

// OpenPodSocket listens on the pod's socket, open to every uid: the pod's processes may run as
// any user, and only that pod (and root on the node) can reach the socket.
func (p *podSockets) OpenPodSocket(pod csi.PodInfo, path string) error {
	lis, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		lis.Close()
		return fmt.Errorf("setting socket mode: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.byUID[pod.UID]; ok {
		old.lis.Close()
	}
	pod.Token = "" // not needed after the publish (see csi.PodInfo); kept nowhere
	p.byUID[pod.UID] = podSocket{pod: pod, lis: lis}
	if p.srv != nil {
		go p.serveOn(p.srv, pod.UID, lis)
	}
	return nil
}

// serve starts srv on every pod socket, and on those opened later.
func (p *podSockets) serve(srv *grpc.Server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.srv = srv
	for uid, s := range p.byUID {
		go p.serveOn(srv, uid, s.lis)
	}
}

// serveOn returns when the listener closes (ClosePodSocket) or the server stops.
func (p *podSockets) serveOn(srv *grpc.Server, uid string, lis net.Listener) {
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, net.ErrClosed) {
		p.log.Warn("pod socket stopped serving", "pod_uid", uid, "error", err)
	}
}

// ClosePodSocket stops listening on the pod's socket; the pod's open connections end with it
// (the gRPC server closes a listener's connections only when it stops, so streams the pod has
// open keep running until the pod is gone).
func (p *podSockets) ClosePodSocket(uid string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.byUID[uid]
	if !ok {
		return nil
	}
	delete(p.byUID, uid)
	if err := s.lis.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Pod returns the pod whose socket is at path.
func (p *podSockets) Pod(path string) (csi.PodInfo, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.byUID {
		if s.lis.Addr().String() == path {
			return s.pod, true
		}
	}
	return csi.PodInfo{}, false
}

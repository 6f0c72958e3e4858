package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	grpcpeer "google.golang.org/grpc/peer"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/config"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/csi"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/unixsock"
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

// serve has srv answer on every pod's socket, open and to come, and httpSrv (nil: none) on the
// HTTP socket next to each.
func (c *csiPlugin) serve(srv *grpc.Server, httpSrv *http.Server) {
	if c != nil {
		c.sockets.serve(srv, httpSrv)
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
	// connections queue in the listen backlog). httpSrv, set with it, serves the Workload
	// API's HTTP form on a second socket next to each pod's (nil: it is off).
	srv     *grpc.Server
	httpSrv *http.Server
	byUID   map[string]podSocket
}

type podSocket struct {
	pod     csi.PodInfo
	lis     net.Listener
	httpLis net.Listener // nil until served with an HTTP server
}

// httpSocketPath is where a pod's HTTP socket is: next to its gRPC socket, under the name the
// shared one has next to the shared socket.
func httpSocketPath(socket string) string {
	return filepath.Join(filepath.Dir(socket), config.HTTPSocketName)
}

// OpenPodSocket listens on the pod's socket, open to every uid: the pod's processes may run as
// any user, and only that pod (and root on the node) can reach the socket.
func (p *podSockets) OpenPodSocket(pod csi.PodInfo, path string) error {
	lis, err := unixsock.Listen(path, 0o666)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.byUID[pod.UID]; ok {
		old.lis.Close()
	}
	pod.Token = "" // not needed after the publish (see csi.PodInfo); kept nowhere
	ps := podSocket{pod: pod, lis: lis}
	if p.srv != nil {
		if err := p.startLocked(&ps); err != nil {
			lis.Close()
			return err
		}
	}
	p.byUID[pod.UID] = ps
	return nil
}

// serve starts srv (and httpSrv) on every pod socket, and on those opened later.
func (p *podSockets) serve(srv *grpc.Server, httpSrv *http.Server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.srv, p.httpSrv = srv, httpSrv
	for uid, s := range p.byUID {
		if err := p.startLocked(&s); err != nil {
			p.log.Warn("pod socket: the workload api http socket could not be opened; the grpc socket serves", "pod_uid", uid, "error", err)
		}
		p.byUID[uid] = s
	}
}

// startLocked serves a pod's gRPC socket and opens and serves its HTTP socket. p.mu is held.
func (p *podSockets) startLocked(s *podSocket) error {
	if p.httpSrv != nil {
		path := httpSocketPath(s.lis.Addr().String())
		lis, err := unixsock.Listen(path, 0o666)
		if err != nil {
			return err
		}
		s.httpLis = lis
		go func() {
			if err := p.httpSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				p.log.Warn("pod http socket stopped serving", "pod_uid", s.pod.UID, "error", err)
			}
		}()
	}
	go p.serveOn(p.srv, s.pod.UID, s.lis)
	return nil
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
	if s.httpLis != nil {
		if err := s.httpLis.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
	}
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
		if s.lis.Addr().String() == path || (s.httpLis != nil && s.httpLis.Addr().String() == path) {
			return s.pod, true
		}
	}
	return csi.PodInfo{}, false
}

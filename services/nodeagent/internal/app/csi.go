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

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/csi"
)

// startCSI runs the CSI driver in g when -csi-endpoint is set: every pod that mounts its volume
// gets its own socket, served by srv like the agent's main socket. It returns the pods' sockets
// (nil with CSI off) and the driver's readiness (always ready with CSI off).
func (a *App) startCSI(ctx context.Context, g *errgroup.Group, srv *grpc.Server) (*podSockets, func() error, error) {
	if !a.cfg.CSI.Enabled() {
		return nil, func() error { return nil }, nil
	}
	sockets := &podSockets{srv: srv, log: a.logger, byUID: map[string]podSocket{}}
	audiences := a.cfg.Audiences()
	driver, err := csi.New(csi.Config{
		DriverName: a.cfg.CSI.DriverName, NodeName: a.cfg.NodeName, Endpoint: a.cfg.CSI.Endpoint,
		RegistrationDir: a.cfg.CSI.RegistrationDir, StateDir: a.cfg.CSI.State(), TokenAudience: audiences[0],
		Publisher: sockets, Logger: a.logger,
	})
	if err != nil {
		return nil, nil, err
	}
	g.Go(func() error { return driver.Run(ctx) })
	return sockets, driver.Ready, nil
}

// podSockets is the agent's csi.Publisher: it serves the agent's gRPC server on each pod's own
// socket and knows which pod each socket is for. A connection's local address (peer.LocalAddr
// in a gRPC handler) is the socket's path: Pod turns it into the pod.
type podSockets struct {
	srv *grpc.Server
	log *slog.Logger

	mu    sync.Mutex
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
	if old, ok := p.byUID[pod.UID]; ok {
		old.lis.Close()
	}
	p.byUID[pod.UID] = podSocket{pod: pod, lis: lis}
	p.mu.Unlock()
	go func() {
		// Serve returns when the listener closes (ClosePodSocket) or the server stops.
		if err := p.srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, net.ErrClosed) {
			p.log.Warn("pod socket stopped serving", "pod_uid", pod.UID, "error", err)
		}
	}()
	return nil
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

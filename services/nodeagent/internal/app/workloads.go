package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/peercred"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secretstore"
)

// openStore opens -state-dir; nil without one.
func (a *App) openStore() (*secretstore.Store, error) {
	if a.cfg.State.Dir == "" {
		return nil, nil
	}
	var key []byte
	if a.cfg.State.KeyFile != "" {
		var err error
		if key, err = secretstore.ReadKeyFile(a.cfg.State.KeyFile); err != nil {
			return nil, fmt.Errorf("-state-key-file: %w", err)
		}
	}
	st, err := secretstore.Open(a.cfg.State.Dir, secretstore.Options{Key: key, Logger: a.logger})
	if err != nil {
		return nil, fmt.Errorf("-state-dir: %w", err)
	}
	return st, nil
}

// peerOptions are the socket server's credentials: with peer attestation on, every connection's
// caller is resolved to its pod by the kernel's peer credentials (package peercred).
func (a *App) peerOptions() []grpc.ServerOption {
	if identity.Mode(a.cfg.WorkloadAttestation) == identity.ModeToken {
		return nil
	}
	r := &peercred.Resolver{ProcRoot: a.cfg.ProcRoot, CgroupRoot: a.cfg.CgroupRoot}
	return []grpc.ServerOption{grpc.Creds(peercred.TransportCredentials(r))}
}

// peerOf is what a stream's connection says about its caller.
func peerOf(ctx context.Context) identity.Peer {
	p, err := peercred.FromContext(ctx)
	if errors.Is(err, peercred.ErrNoPeerCreds) {
		return identity.Peer{} // token mode: nothing but the token
	}
	return identity.Peer{PID: p.PID, UID: p.UID, PodUID: p.PodUID, ContainerID: p.ContainerID, Err: err}
}

// restore serves what the agent held before it restarted, once the pod view is complete: a
// certificate is kept only for pods still on this node.
func restore(ctx context.Context, manager *secrets.Manager, pods *mcpclient.Pods, node string, logger *slog.Logger) {
	select {
	case <-pods.Synced():
	case <-ctx.Done():
		return
	}
	keep := func(p secretstore.Pod) bool {
		pod, ok := pods.Get(p.Namespace + "/" + p.Name)
		return ok && pod.GetUid() == p.UID && pod.GetNodeName() == node
	}
	// Restore checks every certificate against the trust bundle, so it needs citadel. While
	// citadel is away, retry a while; then serve without (sidecars then get new certificates
	// once citadel is back).
	deadline := time.Now().Add(restoreWait)
	for {
		res, err := manager.Restore(ctx, keep)
		if err == nil {
			logger.Info("restored the certificates kept across the restart", "restored", res.Restored, "dropped", res.Dropped)
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			logger.Error("could not restore the certificates kept in -state-dir; serving without them", "err", err)
			return
		}
		logger.Warn("restoring the certificates kept in -state-dir failed; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

// restoreWait bounds how long the agent waits for citadel to restore its state before serving.
const restoreWait = 30 * time.Second

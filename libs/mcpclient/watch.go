// Package mcpclient is the receiving side of MCP-over-xDS: it keeps a state-of-the-world
// subscription to one mcp-sync resource type open, reconnecting on failure, and keeps a local
// index of what it received. citadel and the node agents use it.
package mcpclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// Applier takes the full state of one resource type. An error rejects the update (NACK) and the
// previous state stays in force.
type Applier interface {
	Apply(resources []*anypb.Any) error
}

// Config configures Watch.
type Config struct {
	Conn    grpc.ClientConnInterface
	NodeID  string // the node name for a node agent; mcp-sync checks it against the client certificate
	TypeURL string
	Apply   Applier
	Logger  *slog.Logger
	// MaxBackoff caps the delay between reconnects; 0 means 10s.
	MaxBackoff time.Duration
}

// Watch keeps the subscription open until ctx ends. Connection failures are retried with
// jittered exponential backoff; the last applied state stays in force meanwhile.
func Watch(ctx context.Context, cfg Config) error {
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	backoff := 100 * time.Millisecond
	for {
		received, err := watchOnce(ctx, cfg)
		if ctx.Err() != nil {
			return nil
		}
		if received {
			backoff = 100 * time.Millisecond
		}
		switch status.Code(err) {
		case codes.PermissionDenied, codes.Unauthenticated:
			// Retrying cannot help until the certificate or node name is fixed, but it may be (a
			// rotated certificate), so keep trying, loudly.
			cfg.Logger.Error("mcp-sync refuses this client; check its certificate and node name",
				"type_url", cfg.TypeURL, "node_id", cfg.NodeID, "err", err, "retry_in", backoff)
		default:
			cfg.Logger.Warn("mcp stream broken, reconnecting", "type_url", cfg.TypeURL, "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, cfg.MaxBackoff)
	}
}

func watchOnce(ctx context.Context, cfg Config) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client := sotw.NewADSClient(ctx, &core.Node{Id: cfg.NodeID}, cfg.TypeURL)
	if err := client.InitConnect(cfg.Conn); err != nil {
		return false, fmt.Errorf("opening mcp stream: %w", err)
	}
	for {
		resp, err := client.Fetch()
		if err != nil {
			return received, fmt.Errorf("receiving %s: %w", cfg.TypeURL, err)
		}
		received = true
		if err := cfg.Apply.Apply(resp.Resources); err != nil {
			cfg.Logger.Error("rejecting mcp update", "type_url", cfg.TypeURL, "err", err)
			if err := client.Nack(err.Error()); err != nil {
				return received, fmt.Errorf("nacking %s: %w", cfg.TypeURL, err)
			}
			continue
		}
		if err := client.Ack(); err != nil {
			return received, fmt.Errorf("acking %s: %w", cfg.TypeURL, err)
		}
	}
}

var errWrongType = errors.New("resource of unexpected type")

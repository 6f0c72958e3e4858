package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

// newBackoff is the reconnect schedule: fast enough to catch a restarted agent (a DaemonSet
// rollout) within a second or two, capped so a long outage does not spin.
func newBackoff() wait.Backoff {
	return wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: math.MaxInt32, Cap: 10 * time.Second}
}

// watch holds an SDS stream open for the probe's life, like a sidecar: it asks for the SVID and
// ROOTCA, applies every push, and reconnects with backoff when the stream ends. Each connection
// reads the token file afresh (the kubelet rotates a projected token in place); with no token
// file it presents no token.
func (p *probe) watch(ctx context.Context) error {
	backoff := newBackoff()
	for {
		err := p.stream(ctx, func() { backoff = newBackoff() })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.id.setError(err)
		p.logger.Warn("sds stream ended, reconnecting", "err", err)
		select {
		case <-time.After(backoff.Step()):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stream runs one SDS stream until it fails; received is called after each applied response.
func (p *probe) stream(ctx context.Context, received func()) error {
	var token string // none without -token-file: the agent knows the caller by its socket or process
	if p.cfg.tokenFile != "" {
		raw, err := os.ReadFile(p.cfg.tokenFile)
		if err != nil {
			return fmt.Errorf("reading token: %w", err)
		}
		if token = strings.TrimSpace(string(raw)); token == "" {
			return errors.New("token file is empty")
		}
	}
	client, err := sdsclient.Dial(p.cfg.socket)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.Open(ctx, p.cfg.nodeID, sdsclient.Credential{Token: token})
	if err != nil {
		return fmt.Errorf("opening sds stream: %w", err)
	}
	if err := st.Request(true, p.cfg.resource, rootCAName); err != nil {
		return fmt.Errorf("requesting %s and %s: %w", p.cfg.resource, rootCAName, err)
	}
	for {
		secrets, recvErr := st.Recv()
		if secrets == nil {
			return fmt.Errorf("sds stream: %w", recvErr)
		}
		if err := p.id.apply(secrets); err != nil {
			// The response was already ACKed by sdsclient; keep the stream and report.
			p.id.setError(err)
			p.logger.Error("sds push not applied", "err", err)
		} else {
			st := p.id.status()
			p.logger.Info("sds push applied", "spiffe_id", st.SPIFFEID, "serial", st.Serial,
				"roots", len(st.BundleSHA256), "updates", st.Updates)
			received()
		}
		if recvErr != nil {
			return fmt.Errorf("acknowledging sds response: %w", recvErr)
		}
	}
}

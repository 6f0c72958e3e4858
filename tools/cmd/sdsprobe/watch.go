package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

// newBackoff is the reconnect schedule: fast enough to catch a restarted agent (a DaemonSet
// rollout) within a second or two, capped so a long outage does not spin.
func newBackoff() wait.Backoff {
	return wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: math.MaxInt32, Cap: 10 * time.Second}
}

// subscription is what one SDS stream of the probe asks for and where its responses go.
type subscription struct {
	what     string // for logs
	names    []string
	apply    func(map[string]*tlsv3.Secret) error
	setError func(error)
	applied  func() // logs what an applied response changed
	opened   func() // counts the streams the agent accepted; nil: not counted
}

// svidSubscription asks for the SVID and ROOTCA.
func (p *probe) svidSubscription() subscription {
	return subscription{what: "svid", names: []string{p.cfg.resource, rootCAName}, apply: p.id.apply, setError: p.id.setError,
		applied: func() {
			st := p.id.status()
			p.logger.Info("sds push applied", "spiffe_id", st.SPIFFEID, "serial", st.Serial,
				"roots", len(st.BundleSHA256), "updates", st.Updates)
		}}
}

// namesSubscription asks for -names, on a stream of their own.
func (p *probe) namesSubscription() subscription {
	return subscription{what: "names", names: p.res.names, apply: p.res.apply, setError: p.res.setError, opened: p.res.opened,
		applied: func() {
			st := p.res.status()
			p.logger.Info("sds push of names applied", "held", len(st.Resources), "of", len(p.res.names), "updates", st.ResourcesUpdates)
		}}
}

// watch holds an SDS stream open for the probe's life, like a sidecar: it asks for sub's names,
// applies every push, and reconnects with backoff when the stream ends. Each connection reads
// the token file afresh (the kubelet rotates a projected token in place); with no token file it
// presents no token.
func (p *probe) watch(ctx context.Context, sub subscription) error {
	backoff := newBackoff()
	for {
		err := p.stream(ctx, sub, func() { backoff = newBackoff() })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sub.setError(err)
		p.logger.Warn("sds stream ended, reconnecting", "stream", sub.what, "err", err)
		select {
		case <-time.After(backoff.Step()):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stream runs one SDS stream until it fails; received is called after each applied response.
func (p *probe) stream(ctx context.Context, sub subscription, received func()) error {
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
	if err := st.Request(true, sub.names...); err != nil {
		return fmt.Errorf("requesting %s: %w", strings.Join(sub.names, ", "), err)
	}
	for first := true; ; first = false {
		secrets, recvErr := st.Recv()
		if secrets == nil {
			return fmt.Errorf("sds stream: %w", recvErr)
		}
		if first && sub.opened != nil {
			sub.opened()
		}
		if err := sub.apply(secrets); err != nil {
			// The response was already ACKed by sdsclient; keep the stream and report.
			sub.setError(err)
			p.logger.Error("sds push not applied", "stream", sub.what, "err", err)
		} else {
			sub.applied()
			received()
		}
		if recvErr != nil {
			return fmt.Errorf("acknowledging sds response: %w", recvErr)
		}
	}
}

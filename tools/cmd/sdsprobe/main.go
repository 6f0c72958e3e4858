// Command sdsprobe is the test workload of the cluster end-to-end suite: it gets its SVID and
// trust bundle from the node agent over SDS (the way Envoy does, with its workload token), keeps
// the stream open and applies every push, serves mTLS with what it holds, and reports all of it
// on a small HTTP API:
//
//	GET  /status                  {spiffe_id, serial, not_after, bundle_sha256, updates, last_error, peers,
//	                               resources, resources_updates, resources_streams, resources_error}
//
// With -names it also holds a second SDS stream for those resource names (KeySecrets
// "key/<ns>/<name>", gateway certificates "kubernetes://<name>" and "<name>-cacert") and reports
// under "resources" what it last received for each, described, never the material itself.
//
//	GET  /readyz                  200 once an SVID has arrived
//	POST /handshake?addr=IP:PORT  mTLS to another probe: {ok, peer_spiffe_id, error}
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"os"

	"golang.org/x/sync/errgroup"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
)

// Defaults for a pod: Istio's SDS socket path and a projected token volume.
const (
	defaultSocket    = "/var/run/secrets/workload-spiffe-uds/socket"
	defaultTokenFile = "/var/run/secrets/tokens/portcullis-token"
)

type config struct {
	socket, tokenFile, resource, nodeID string
	listen, httpListen                  string
	names                               []string
}

func (c *config) RegisterFlags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	fs.StringVar(&c.socket, "socket", defaultSocket, "node agent's SDS Unix socket")
	fs.StringVar(&c.tokenFile, "token-file", defaultTokenFile, "workload token file (re-read on every reconnect); empty: present no token")
	fs.StringVar(&c.resource, "resource", "default", "SDS resource name of the SVID")
	fs.StringVar(&c.nodeID, "node-id", "sdsprobe~"+host, "xDS node id sent to the agent")
	fs.StringVar(&c.listen, "listen", ":8443", "mTLS listen address")
	fs.StringVar(&c.httpListen, "http", ":8080", "status API listen address")
	fs.Func("names", "comma-separated extra SDS resource names to hold on a stream of their own (KeySecrets, gateway certificates)", func(s string) error {
		c.names = parseNames(s)
		return nil
	})
}

func (c *config) Validate() error {
	var errs []error
	for flagName, v := range map[string]string{"socket": c.socket, "resource": c.resource, "listen": c.listen, "http": c.httpListen} {
		if v == "" {
			errs = append(errs, errors.New("-"+flagName+" is required"))
		}
	}
	return errors.Join(errs...)
}

// probe is one running sdsprobe. newProbe binds its listeners, so their addresses are known
// before Run.
type probe struct {
	cfg     config
	logger  *slog.Logger
	id      *identity
	res     *resources // -names
	mtlsLis net.Listener
	httpLis net.Listener
}

func newProbe(cfg config, logger *slog.Logger) (*probe, error) {
	p := &probe{cfg: cfg, logger: logger, id: &identity{resource: cfg.resource}, res: newResources(cfg.names)}
	var err error
	if p.mtlsLis, err = lifecycle.Listen(logger, "mtls", cfg.listen); err != nil {
		return nil, err
	}
	if p.httpLis, err = lifecycle.Listen(logger, "http", cfg.httpListen); err != nil {
		p.mtlsLis.Close()
		return nil, err
	}
	return p, nil
}

// Run holds the SDS stream and serves mTLS and the status API until ctx ends or one fails.
func (p *probe) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.watch(ctx, p.svidSubscription()) })
	if len(p.res.names) > 0 {
		g.Go(func() error { return p.watch(ctx, p.namesSubscription()) })
	}
	g.Go(func() error { return p.serveMTLS(ctx) })
	g.Go(func() error { return p.serveHTTP(ctx) })
	return g.Wait()
}

func main() {
	var cfg config
	os.Exit(lifecycle.Main("sdsprobe", os.Args[1:], &cfg, func(logger *slog.Logger) (lifecycle.Runnable, error) {
		return newProbe(cfg, logger)
	}))
}

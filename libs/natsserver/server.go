// Package natsserver runs the embedded NATS server (with JetStream) that carries rotation events
// when no external NATS is configured. Clients authenticate with their control-plane certificate
// (mTLS); what each may publish or subscribe follows from its SPIFFE ID, so that only kms-adapter
// can publish events and a node agent can do nothing but follow them.
package natsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

// Config configures the embedded server.
type Config struct {
	Listen   string // host:port; port 0 picks a free one (logged as listener "nats")
	StoreDir string // JetStream file store, created 0700 by the server
	Identity *servicetls.Identity
	Logger   *slog.Logger
	// Publishers are the service names allowed to publish events (default: kms-adapter).
	Publishers []string
}

// Server is a running embedded NATS server.
type Server struct {
	ns     *server.Server
	logger *slog.Logger
}

// Start starts the server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", cfg.Listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if len(cfg.Publishers) == 0 {
		cfg.Publishers = []string{servicetls.KMSAdapter}
	}
	opts := &server.Options{
		ServerName: "portcullis-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		TLS:        true,
		TLSConfig:  cfg.Identity.ServerTLS(),
		// TLSVerify stays off: ServerTLS verifies any certificate offered, and the authenticator
		// refuses a client without one by name instead of with a bare TLS alert.
		TLSTimeout:                 5,
		CustomClientAuthentication: &authenticator{td: cfg.Identity.TrustDomain(), publishers: cfg.Publishers, logger: cfg.Logger},
		MaxPayload:                 64 * 1024,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns.SetLoggerV2(&logAdapter{l: cfg.Logger.With("component", "nats")}, false, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats on %s did not become ready", cfg.Listen)
	}
	addr := ns.Addr().String()
	cfg.Logger.Info(lifecycle.ListeningMsg, "listener", "nats", "addr", addr)
	return &Server{ns: ns, logger: cfg.Logger}, nil
}

// URL is the address clients dial.
func (s *Server) URL() string { return "tls://" + s.ns.Addr().String() }

// Run serves until ctx ends, then shuts the server down.
func (s *Server) Run(ctx context.Context) error {
	<-ctx.Done()
	s.Shutdown()
	return nil
}

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Subjects a follower needs to run an ordered consumer on the event stream, and nothing else: it
// can neither publish events nor change or delete the stream.
var followerPublish = []string{
	"$JS.API.INFO",
	"$JS.API.STREAM.INFO." + events.Stream,
	"$JS.API.CONSUMER.CREATE." + events.Stream,
	"$JS.API.CONSUMER.CREATE." + events.Stream + ".>",
	"$JS.API.CONSUMER.INFO." + events.Stream + ".>",
	"$JS.API.CONSUMER.DELETE." + events.Stream + ".>",
	"$JS.API.CONSUMER.MSG.NEXT." + events.Stream + ".>",
}

// Package natsserver runs the embedded NATS server (with JetStream) that carries rotation events
// when no external NATS is configured. Clients authenticate with their control-plane certificate
// (mTLS); what each may publish or subscribe follows from its SPIFFE ID, so that only kms-adapter
// can publish events and a node agent can do nothing but follow them.
package natsserver

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

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
	guard  *nats.Conn
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
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	auth := &authenticator{td: cfg.Identity.TrustDomain(), publishers: cfg.Publishers, logger: cfg.Logger,
		guardToken: base64.RawURLEncoding.EncodeToString(secret)}
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
		CustomClientAuthentication: auth,
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
	guard, err := startGuard(ns, auth.guardToken, cfg.Logger.With("component", "nats-guard"))
	if err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, err
	}
	addr := ns.Addr().String()
	cfg.Logger.Info(lifecycle.ListeningMsg, "listener", "nats", "addr", addr)
	return &Server{ns: ns, guard: guard, logger: cfg.Logger}, nil
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
	s.guard.Close()
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// startGuard connects the guard in process and serves the followers' JetStream API with it.
func startGuard(ns *server.Server, token string, logger *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Token(token), nats.Name("portcullis-guard"),
		nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("embedded nats: connecting the jetstream guard: %w", err)
	}
	g := &guard{logger: logger}
	if _, err := nc.Subscribe(events.GuardedAPIRoot+".>", func(m *nats.Msg) { g.handle(nc, m) }); err != nil {
		nc.Close()
		return nil, fmt.Errorf("embedded nats: jetstream guard: %w", err)
	}
	if err := nc.Flush(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("embedded nats: jetstream guard: %w", err)
	}
	return nc, nil
}

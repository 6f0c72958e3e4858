// Package lifecycle runs the long-lived parts of a Portcullis binary: listeners that announce
// their address, gRPC and HTTP servers that stop gracefully, and the admin endpoint.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
)

// ShutdownGrace bounds how long a graceful stop may take before connections are cut.
const ShutdownGrace = 5 * time.Second

// ListeningMsg is the log message that announces a bound listener. Tools that start Portcullis
// processes (the dev stack, e2e tests) read the bound address from it, so ports can be ephemeral.
const ListeningMsg = "listening"

// Listen binds a TCP address (port 0 picks a free port) and logs the bound address under name.
func Listen(logger *slog.Logger, name, addr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for %s on %s: %w", name, addr, err)
	}
	logger.Info(ListeningMsg, "listener", name, "addr", lis.Addr().String())
	return lis, nil
}

// ServeGRPC serves until ctx ends, then stops gracefully (forcibly after ShutdownGrace).
func ServeGRPC(ctx context.Context, srv *grpc.Server, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc server on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(ShutdownGrace):
		srv.Stop()
	}
	return nil
}

// ServeHTTP serves until ctx ends, then shuts down gracefully.
func ServeHTTP(ctx context.Context, srv *http.Server, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutting down http server: %w", err)
	}
	return nil
}

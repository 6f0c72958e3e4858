package peercred_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/peer"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/peercred"
)

// ConnContext gives a non-gRPC server on a Unix socket what a gRPC handler gets: the peer's
// addresses and its credentials, read from the kernel.
func TestConnContextResolvesTheCaller(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx := peercred.ConnContext(&peercred.Resolver{})(context.Background(), conn)
	p, _ := peercred.FromContext(ctx) // this test process is in no pod: the error says so
	if p.Creds.PID != int32(os.Getpid()) || p.Creds.UID != uint32(os.Getuid()) {
		t.Fatalf("resolved pid %d uid %d, want this process (%d, %d)", p.Creds.PID, p.Creds.UID, os.Getpid(), os.Getuid())
	}
	if gp, ok := peer.FromContext(ctx); !ok || gp.LocalAddr.String() != path {
		t.Fatalf("peer %+v, want local address %s", gp, path)
	}

	// Without a resolver: the addresses alone, as a gRPC server without these credentials.
	ctx = peercred.ConnContext(nil)(context.Background(), conn)
	if _, err := peercred.FromContext(ctx); err == nil {
		t.Fatal("peer credentials without a resolver")
	}
}

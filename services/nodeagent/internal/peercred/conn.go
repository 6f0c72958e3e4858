package peercred

import (
	"context"
	"net"

	"google.golang.org/grpc/peer"
)

// ConnContext resolves the caller of conn, a connection accepted on a Unix socket, as the gRPC
// handshake does (TransportCredentials), and returns ctx carrying it the way gRPC carries it (a
// *peer.Peer whose AuthInfo is an AuthInfo): FromContext, and anything else that reads a
// handler's peer, then works the same for a non-gRPC server on a Unix socket. It is shaped for
// net/http.Server.ConnContext. A nil r resolves nothing: the peer carries the addresses alone,
// as with a gRPC server without these credentials. net/http calls it in its accept loop, so the
// resolution (a few reads under ProcRoot, as in the gRPC handshake) delays the next accept by as
// much.
func ConnContext(r *Resolver) func(ctx context.Context, conn net.Conn) context.Context {
	return func(ctx context.Context, conn net.Conn) context.Context {
		p := &peer.Peer{Addr: conn.RemoteAddr(), LocalAddr: conn.LocalAddr()}
		if r != nil {
			info, err := r.handshake(conn)
			if err != nil {
				info = AuthInfo{Err: err}
			}
			p.AuthInfo = info
		}
		return peer.NewContext(ctx, p)
	}
}

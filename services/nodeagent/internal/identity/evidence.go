package identity

import (
	"context"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// BearerToken returns the token of the last "authorization: Bearer <token>" entry of a gRPC
// request's metadata, "" if there is none. Every API on the agent's sockets (SDS, the Workload
// API) reads the workload's token here.
func BearerToken(ctx context.Context) string {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ""
	}
	tok := ""
	for _, v := range md.Get(workloadtoken.GRPCMetadataKey) {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			tok = strings.TrimSpace(t)
		}
	}
	return tok
}

// Gather is the evidence of a call on one of the agent's sockets: token, the token the caller
// sent ("" for none), and what the connection says (peer, nil for nothing).
func Gather(ctx context.Context, token string, peer func(context.Context) Peer) Evidence {
	ev := Evidence{Token: token}
	if peer != nil {
		ev.Peer = peer(ctx)
	}
	return ev
}

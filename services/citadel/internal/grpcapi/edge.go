package grpcapi

import (
	"context"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// Refusals that happen before citadel's handlers run (a client certificate the handshake refuses,
// no certificate, an identity that may not call a method) would otherwise leave no trace on the
// server: the caller sees a TLS alert or a status, the operator nothing. They are logged and
// counted here.

// ServerCredentials is citadel's mTLS server side: the identity's, reporting each client
// certificate the handshake refuses, named by the identity it claims.
func ServerCredentials(id *servicetls.Identity, m *metrics.Metrics, logger *slog.Logger) credentials.TransportCredentials {
	return credentials.NewTLS(id.ServerTLSObserved(func(r servicetls.RejectedClient) {
		m.RefusedBeforeHandler.WithLabelValues(metrics.ReasonBadClientCertificate).Inc()
		logger.Warn("client certificate refused in the TLS handshake",
			"remote_addr", r.RemoteAddr, "claimed_uris", r.URIs, "subject", r.Subject, "issuer", r.Issuer, "err", r.Err)
	}))
}

// observeRefusal logs and counts a call the authorization interceptors refused.
func (s *Server) observeRefusal(ctx context.Context, method string, id spiffeid.ID, err error) {
	reason := metrics.ReasonCallerNotAllowed
	if id.IsZero() {
		reason = metrics.ReasonNoClientCertificate
	}
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.RefusedBeforeHandler.WithLabelValues(reason).Inc()
	}
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	who := "none"
	if !id.IsZero() {
		who = id.String()
	}
	s.cfg.Logger.Warn("call refused before its handler", "method", method, "peer_id", who,
		"remote_addr", addr, "reason", reason, "err", err)
}

package attest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	attestv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/attest/v1"
)

// Maximum sizes of a request's parts: a projected token is ~1-2 KiB and a P-256 CSR ~250 bytes;
// the limits leave room for RSA and long claims while keeping a caller without credentials from
// making citadel parse megabytes.
const (
	maxTokenBytes = 16 << 10
	maxCSRBytes   = 16 << 10
)

// Server is the gRPC edge of node attestation: the only place attestation errors become status
// codes. Every refusal is logged and counted.
type Server struct {
	attestv1.UnimplementedNodeAttestationServiceServer
	attestor *Attestor
	logger   *slog.Logger
	results  *prometheus.CounterVec
}

// NewServer serves a. results counts every answer by result (see metrics.AttestRequests).
func NewServer(a *Attestor, logger *slog.Logger, results *prometheus.CounterVec) *Server {
	return &Server{attestor: a, logger: logger, results: results}
}

// NewGRPCServer serves s with creds (server authentication only: callers have no control-plane
// certificate yet, that is what they come for).
func NewGRPCServer(creds credentials.TransportCredentials, s *Server) *grpc.Server {
	g := grpc.NewServer(grpc.Creds(creds), grpc.MaxRecvMsgSize(maxTokenBytes+maxCSRBytes+1024))
	attestv1.RegisterNodeAttestationServiceServer(g, s)
	return g
}

// AttestNode implements attestv1.NodeAttestationServiceServer.
func (s *Server) AttestNode(ctx context.Context, req *attestv1.AttestNodeRequest) (*attestv1.AttestNodeResponse, error) {
	from := "unknown"
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	var res Result
	var err error
	if len(req.GetToken()) > maxTokenBytes || len(req.GetCsr()) > maxCSRBytes {
		err = fmt.Errorf("%w: token (%d bytes) or csr (%d bytes) larger than %d bytes", errTooLarge,
			len(req.GetToken()), len(req.GetCsr()), maxTokenBytes)
	} else {
		res, err = s.attestor.Attest(ctx, req.GetToken(), req.GetCsr())
	}
	if err != nil {
		st := toStatus(err)
		s.results.WithLabelValues(st.Code().String()).Inc()
		// The token is never logged: it is a bearer credential.
		s.logger.Warn("node attestation refused", "peer", from, "code", st.Code().String(), "err", err)
		return nil, st.Err()
	}
	s.results.WithLabelValues("issued").Inc()
	s.logger.Info("node attested", "peer", from, "node", res.Node, "spiffe_id", res.ID.String(),
		"expires", res.Chain[0].NotAfter)
	resp := &attestv1.AttestNodeResponse{SpiffeId: res.ID.String()}
	for _, c := range res.Chain {
		resp.CertChain = append(resp.CertChain, c.Raw)
	}
	return resp, nil
}

var errTooLarge = errors.New("request too large")

// toStatus maps the sentinels to status codes; the message is the error's own text.
func toStatus(err error) *status.Status {
	code := codes.Internal
	switch {
	case errors.Is(err, ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, ErrForbidden):
		code = codes.PermissionDenied
	case errors.Is(err, ErrInvalidCSR), errors.Is(err, errTooLarge):
		code = codes.InvalidArgument
	case errors.Is(err, ErrNotSynced):
		code = codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.New(code, err.Error())
}

package servicetls

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ErrNoPeerCertificate means the caller presented no verified control-plane certificate.
var ErrNoPeerCertificate = errors.New("no verified control-plane client certificate")

// PeerID returns the SPIFFE ID of the verified client certificate of a gRPC call.
func PeerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, ErrNoPeerCertificate
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerCertificate
	}
	return x509svid.IDFromCert(info.State.PeerCertificates[0])
}

// Authorizer decides whether a verified peer may call a method. It returns an error that says why
// not; the interceptors turn it into PermissionDenied.
type Authorizer func(ctx context.Context, peer spiffeid.ID, fullMethod string) error

// AllowServices admits the named singleton services on any method.
func AllowServices(services ...string) Authorizer {
	return func(_ context.Context, id spiffeid.ID, _ string) error {
		for _, s := range services {
			if IsService(id, s) {
				return nil
			}
		}
		return errors.New("caller is not an allowed control-plane service")
	}
}

// Interceptors enforce a verified client certificate and the authorizer on every call, except on
// the methods in open (e.g. gRPC health checks).
func Interceptors(authorize Authorizer, open ...string) []grpc.ServerOption {
	return ObservedInterceptors(authorize, nil, open...)
}

// RefusalObserver is told about every call the interceptors refuse, before any handler runs:
// peer is zero when the caller presented no certificate, err is the status returned to it.
type RefusalObserver func(ctx context.Context, method string, peer spiffeid.ID, err error)

// ObservedInterceptors are Interceptors that also report each refusal to observe (if not nil),
// so that a service can log and count what never reaches its handlers.
func ObservedInterceptors(authorize Authorizer, observe RefusalObserver, open ...string) []grpc.ServerOption {
	check := func(ctx context.Context, method string) error {
		for _, m := range open {
			if m == method {
				return nil
			}
		}
		id, err := PeerID(ctx)
		if err != nil {
			err = status.Errorf(codes.Unauthenticated, "%s: a control-plane client certificate is required", method)
		} else if aerr := authorize(ctx, id, method); aerr != nil {
			err = status.Errorf(codes.PermissionDenied, "%s: %s: %v", method, Describe(id), aerr)
		}
		if err != nil && observe != nil {
			observe(ctx, method, id, err)
		}
		return err
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

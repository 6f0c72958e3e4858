package workloadapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// FetchX509SVID streams the caller's X.509-SVID, again on every renewal, forced rotation and
// bundle change. The certificate is the one SDS serves the same identity (secrets.Manager); the
// stream's subscription keeps it renewed while the stream is open.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) (err error) {
	const method = "FetchX509SVID"
	defer s.called(method, &err)
	ctx := stream.Context()
	caller, done, err := s.openWatch(ctx, method)
	if err != nil {
		return err
	}
	defer done()
	sub := s.cfg.Secrets.Subscribe(caller.ID)
	defer s.cfg.Secrets.Unsubscribe(sub)
	var last []byte // the last response's chain and bundle, to skip notifications that change neither
	for {
		resp, sig, err := s.x509SVID(ctx, caller)
		switch {
		case err != nil && last == nil:
			return grpcError(err) // the caller retries; go-spiffe does, with backoff
		case err != nil:
			// What the caller holds stays valid; the manager retries renewals and notifies.
			s.cfg.Logger.Warn("workload api: refreshing an x509-svid failed", "spiffe_id", caller.ID.String(), "err", err)
		case !bytes.Equal(sig, last):
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = sig
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sub.C:
		}
	}
}

// x509SVID builds the caller's response; sig identifies its content.
func (s *Server) x509SVID(ctx context.Context, caller identity.Caller) (*workloadpb.X509SVIDResponse, []byte, error) {
	cert, err := s.cfg.Secrets.Certificate(ctx, caller.ID, secrets.Credential{Pod: caller.Pod, Token: caller.Token})
	if err != nil {
		return nil, nil, err
	}
	roots, err := s.cfg.Secrets.Roots(ctx)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(cert.KeyPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("certificate of %s carries no PEM key", caller.ID)
	}
	chain := concatDER(presented(cert.Chain))
	bundle := concatDER(roots)
	sig := append(append([]byte{}, chain...), bundle...)
	return &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId: caller.ID.String(), X509Svid: chain, X509SvidKey: block.Bytes, Bundle: bundle,
	}}}, sig, nil
}

// FetchX509Bundles streams the trust domain's X.509 roots, again whenever they change.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) (err error) {
	const method = "FetchX509Bundles"
	defer s.called(method, &err)
	ctx := stream.Context()
	_, done, err := s.openWatch(ctx, method)
	if err != nil {
		return err
	}
	defer done()
	// A subscription to no identity hears of bundle changes only.
	sub := s.cfg.Secrets.Subscribe(spiffeid.ID{})
	defer s.cfg.Secrets.Unsubscribe(sub)
	var last []byte
	for {
		roots, err := s.cfg.Secrets.Roots(ctx)
		switch {
		case err != nil && last == nil:
			return grpcError(err)
		case err != nil:
			s.cfg.Logger.Warn("workload api: refreshing the x509 bundle failed", "err", err)
		default:
			if der := concatDER(roots); !bytes.Equal(der, last) {
				if err := stream.Send(&workloadpb.X509BundlesResponse{Bundles: map[string][]byte{s.cfg.TrustDomain.IDString(): der}}); err != nil {
					return err
				}
				last = der
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sub.C:
		}
	}
}

// presented is the chain a workload presents: leaf and intermediates, no self-signed root (the
// root travels in the bundle), as SDS serves it.
func presented(chain []*x509.Certificate) []*x509.Certificate {
	out := make([]*x509.Certificate, 0, len(chain))
	for _, c := range chain {
		if len(chain) > 1 && bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil {
			continue
		}
		out = append(out, c)
	}
	return out
}

func concatDER(certs []*x509.Certificate) []byte {
	n := 0
	for _, c := range certs {
		n += len(c.Raw)
	}
	out := make([]byte, 0, n)
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// Package kmstest is a stand-in kms-adapter for citadel's tests: a KeyManagementServiceServer that
// signs with crypto/x509 under a throwaway root and counts its calls, and a JWTService that signs
// with go-jose, served over real mTLS with
// the kms-adapter identity. The real kms-adapter (local CA and Vault backends) is exercised by the
// e2e suite; citadel's tests only need a signer that behaves like its API.
package kmstest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// Server signs leaves valid from Clock.Now() for the requested TTL, chained to Root.
type Server struct {
	kmsv1.UnimplementedKeyManagementServiceServer
	TrustDomain spiffeid.TrustDomain
	Clock       clock.PassiveClock
	Root        *x509.Certificate
	key         *ecdsa.PrivateKey
	// Signs counts SignCertificate calls.
	Signs atomic.Int64
	// Gate, if set before serving, holds every SignCertificate until it is closed; Started (which
	// must then be set too) receives one value per call that reached the gate.
	Gate    chan struct{}
	Started chan struct{}
	// RevocationFetches counts GetRevocations calls.
	RevocationFetches atomic.Int64

	// JWT counts the JWTService calls.
	JWT JWTCounters

	mu          sync.Mutex
	revocations *kmsv1.GetRevocationsResponse
	jwt         jwtKeys
}

// New makes a server with a fresh root valid for ten years.
func New(t testing.TB, td spiffeid.TrustDomain, clk clock.PassiveClock) *Server {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test workload root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{spiffeid.RequireFromSegments(td).URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{TrustDomain: td, Clock: clk, Root: root, key: key, revocations: &kmsv1.GetRevocationsResponse{}}
	s.RotateJWTKey()
	return s
}

// Serve serves s on 127.0.0.1:0 with id's mTLS credentials, admitting only citadel, until the test
// ends. It returns the address and the gRPC server (Stop it to simulate an outage).
func (s *Server) Serve(t testing.TB, id *servicetls.Identity) (string, *grpc.Server) {
	t.Helper()
	opts := append([]grpc.ServerOption{grpc.Creds(id.ServerCredentials())},
		servicetls.Interceptors(servicetls.AllowServices(servicetls.Citadel))...)
	srv := grpc.NewServer(opts...)
	kmsv1.RegisterKeyManagementServiceServer(srv, s)
	kmsv1.RegisterJWTServiceServer(srv, &jwtService{s: s})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), srv
}

// SignCertificate certifies the CSR's key for the given SPIFFE ID.
func (s *Server) SignCertificate(ctx context.Context, req *kmsv1.SignCertificateRequest) (*kmsv1.SignCertificateResponse, error) {
	n := s.Signs.Add(1)
	if s.Gate != nil {
		s.Started <- struct{}{}
		select {
		case <-s.Gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	now := s.Clock.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(n + 1),
		NotBefore:    now, NotAfter: now.Add(time.Duration(req.GetTtlSeconds()) * time.Second),
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.Root, csr.PublicKey, s.key)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &kmsv1.SignCertificateResponse{CertChain: [][]byte{der, s.Root.Raw}}, nil
}

// GetTrustBundle returns Root.
func (s *Server) GetTrustBundle(context.Context, *kmsv1.GetTrustBundleRequest) (*kmsv1.GetTrustBundleResponse, error) {
	return &kmsv1.GetTrustBundleResponse{TrustDomain: s.TrustDomain.Name(), RootCertificates: [][]byte{s.Root.Raw}}, nil
}

// SetRevocations sets the state GetRevocations serves; nil makes it answer UNAVAILABLE (the state
// cannot be read). A new server serves an empty state.
func (s *Server) SetRevocations(r *kmsv1.GetRevocationsResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revocations = r
}

// GetRevocations serves the state set by SetRevocations.
func (s *Server) GetRevocations(context.Context, *kmsv1.GetRevocationsRequest) (*kmsv1.GetRevocationsResponse, error) {
	s.RevocationFetches.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revocations == nil {
		return nil, status.Error(codes.Unavailable, "revocation state withheld by the test")
	}
	return proto.Clone(s.revocations).(*kmsv1.GetRevocationsResponse), nil
}

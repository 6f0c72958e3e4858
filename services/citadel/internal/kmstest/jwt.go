package kmstest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// jwtKeys is the stand-in's JWT signer: ES256 keys, the first signs, all are published.
type jwtKeys struct {
	keys    []*ecdsa.PrivateKey
	ids     []string
	version uint64
}

// jwtService serves kmsv1.JWTService for a Server (a type of its own: both generated
// Unimplemented servers cannot be embedded in one struct).
type jwtService struct {
	kmsv1.UnimplementedJWTServiceServer
	s *Server
}

// JWT counters of a Server.
type JWTCounters struct {
	Signs         atomic.Int64 // SignJWTSVID calls
	BundleFetches atomic.Int64 // GetJWTBundle calls
}

// RotateJWTKey makes a new key that signs from now on, keeping the previous ones published, and
// returns the new bundle version (kms-adapter's prepare and activate in one).
func (s *Server) RotateJWTKey() uint64 {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jwt.keys = append([]*ecdsa.PrivateKey{key}, s.jwt.keys...)
	s.jwt.ids = append([]string{fmt.Sprintf("key-%d", s.jwt.version+1)}, s.jwt.ids...)
	s.jwt.version++
	return s.jwt.version
}

// ActiveJWTKeyID is the id of the key that signs.
func (s *Server) ActiveJWTKeyID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jwt.ids[0]
}

func (j *jwtService) SignJWTSVID(ctx context.Context, req *kmsv1.SignJWTSVIDRequest) (*kmsv1.SignJWTSVIDResponse, error) {
	s := j.s
	s.JWT.Signs.Add(1)
	if len(req.GetAudiences()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no audience")
	}
	s.mu.Lock()
	key, kid := s.jwt.keys[0], s.jwt.ids[0]
	s.mu.Unlock()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := s.Clock.Now().Truncate(time.Second)
	exp := now.Add(time.Duration(req.GetTtlSeconds()) * time.Second)
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: req.GetSpiffeId(), Audience: req.GetAudiences(),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp)}).Serialize()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &kmsv1.SignJWTSVIDResponse{Token: tok}, nil
}

func (j *jwtService) GetJWTBundle(context.Context, *kmsv1.GetJWTBundleRequest) (*kmsv1.GetJWTBundleResponse, error) {
	s := j.s
	s.JWT.BundleFetches.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	set := jose.JSONWebKeySet{}
	for i, k := range s.jwt.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: s.jwt.ids[i], Algorithm: string(jose.ES256), Use: "jwt-svid"})
	}
	data, err := json.Marshal(set)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &kmsv1.GetJWTBundleResponse{TrustDomain: s.TrustDomain.Name(), Jwks: data, Version: s.jwt.version}, nil
}

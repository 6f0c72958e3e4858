package workloadapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/citadelclient"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// MaxTokenBytes bounds a token to validate: a JWT-SVID is about 1 KiB; anything far larger is
// refused before it is parsed.
const MaxTokenBytes = 16 << 10

// AttributesClaim is the key of the attributes in ValidateJWTSVID's claims.
const AttributesClaim = "attributes"

// FetchJWTSVID returns a JWT-SVID of the caller's identity for the requested audiences.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (_ *workload.JWTSVIDResponse, err error) {
	defer s.called("FetchJWTSVID", &err)
	caller, err := s.authenticate(ctx, "FetchJWTSVID")
	if err != nil {
		return nil, grpcError(err)
	}
	svid, err := s.fetchJWT(ctx, caller, req.GetAudience(), req.GetSpiffeId())
	if err != nil {
		return nil, grpcError(err)
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: svid.SPIFFEID, Svid: svid.Token}}}, nil
}

// fetchJWT is FetchJWTSVID for both APIs.
func (s *Server) fetchJWT(ctx context.Context, caller identity.Caller, audiences []string, spiffeID string) (citadelclient.JWTSVID, error) {
	if spiffeID != "" {
		id, err := spiffeid.FromString(spiffeID)
		if err != nil {
			return citadelclient.JWTSVID{}, invalid(fmt.Sprintf("invalid requested SPIFFE ID: %v", err))
		}
		if id != caller.ID {
			return citadelclient.JWTSVID{}, apiError{codes.PermissionDenied, fmt.Sprintf("no identity issued for %s", id)}
		}
	}
	return s.cfg.JWTs.Get(ctx, caller, audiences)
}

// FetchJWTBundles streams the JWT bundle, again whenever it changes.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) (err error) {
	const method = "FetchJWTBundles"
	defer s.called(method, &err)
	ctx := stream.Context()
	_, done, err := s.openWatch(ctx, method)
	if err != nil {
		return err
	}
	defer done()
	for {
		jwks, changed, _, ok := s.cfg.Bundles.Current()
		if ok {
			if err := stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{s.cfg.TrustDomain.IDString(): jwks}}); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// ValidateJWTSVID checks a token against the JWT bundle and an audience, and returns its SPIFFE
// ID and its claims, with the ID's attributes under AttributesClaim.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (_ *workload.ValidateJWTSVIDResponse, err error) {
	defer s.called("ValidateJWTSVID", &err)
	if _, err := s.authenticate(ctx, "ValidateJWTSVID"); err != nil {
		return nil, grpcError(err)
	}
	v, err := s.validate(req.GetSvid(), req.GetAudience())
	if err != nil {
		return nil, grpcError(err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: v.svid.ID.String(), Claims: v.claims}, nil
}

// validated is a token that passed validation.
type validated struct {
	svid       *jwtsvid.SVID
	attributes map[string]string
	claims     *structpb.Struct // the token's claims and AttributesClaim
}

// validate is ValidateJWTSVID for both APIs.
func (s *Server) validate(token, audience string) (validated, error) {
	switch {
	case audience == "":
		return validated{}, invalid("audience must be specified")
	case token == "":
		return validated{}, invalid("svid must be specified")
	case len(token) > MaxTokenBytes:
		return validated{}, invalid(fmt.Sprintf("svid of %d bytes is too large (at most %d)", len(token), MaxTokenBytes))
	}
	if alg := unverifiedAlg(token); alg == "none" || alg == "" {
		// go-spiffe refuses it too, but says only that the token does not parse.
		return validated{}, invalid(fmt.Sprintf("unsigned token (alg %q) refused", alg))
	}
	svid, err := jwtsvid.ParseAndValidate(token, s.cfg.Bundles, []string{audience})
	if err != nil {
		return validated{}, invalid(err.Error())
	}
	attrs := s.cfg.Attributes.Of(svid.ID)
	claims := make(map[string]any, len(svid.Claims)+1)
	for k, v := range svid.Claims {
		claims[k] = v
	}
	asAny := make(map[string]any, len(attrs))
	for k, v := range attrs {
		asAny[k] = v
	}
	claims[AttributesClaim] = asAny
	st, err := structpb.NewStruct(claims)
	if err != nil {
		return validated{}, invalid(fmt.Sprintf("claims cannot be represented: %v", err))
	}
	return validated{svid: svid, attributes: attrs, claims: st}, nil
}

// unverifiedAlg is the alg of a compact JWS's header, "" if it has none or does not parse.
func unverifiedAlg(token string) string {
	header, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil {
		return ""
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(raw, &h) != nil {
		return ""
	}
	return strings.ToLower(h.Alg)
}

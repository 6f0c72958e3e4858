package workloadapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// HTTPSecurityHeader must be "true" on every HTTP API request, as SecurityHeader on the gRPC
// API: a request forged through an SSRF hole in an app carries no such header.
const HTTPSecurityHeader = "Workload-Spiffe-Io"

// maxHTTPBody bounds a request body: a token to validate (MaxTokenBytes) and an audience.
const maxHTTPBody = MaxTokenBytes + 4<<10

// HTTPHandler is the HTTP/JSON form of the JWT calls, for apps that do not speak gRPC:
//
//	POST /v1/jwtsvid  {"audience": ["a", ...]}          → {"spiffe_id", "token", "expires_at"}
//	POST /v1/validate {"token": "...", "audience": "a"} → {"spiffe_id", "claims", "attributes"}
//
// Errors are {"error": "...", "code": "<gRPC code name>"} with the matching HTTP status. Callers
// are identified as on the gRPC API: the connection (the server's ConnContext puts it in each
// request's context, where Config.Peer finds it) and an optional "Authorization: Bearer" token.
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/jwtsvid", s.httpJWTSVID)
	mux.HandleFunc("POST /v1/validate", s.httpValidate)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.httpError(w, r, apiError{codes.NotFound, fmt.Sprintf("no %s %s: this API serves POST /v1/jwtsvid and POST /v1/validate", r.Method, r.URL.Path)})
	})
	return mux
}

type jwtSVIDRequest struct {
	Audience []string `json:"audience"`
	SPIFFEID string   `json:"spiffe_id,omitempty"`
}

type jwtSVIDResponse struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

type validateRequest struct {
	Token    string `json:"token"`
	Audience string `json:"audience"`
}

type validateResponse struct {
	SPIFFEID   string            `json:"spiffe_id"`
	Claims     map[string]any    `json:"claims"`
	Attributes map[string]string `json:"attributes"`
}

type httpErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func (s *Server) httpJWTSVID(w http.ResponseWriter, r *http.Request) {
	var req jwtSVIDRequest
	if !s.httpDecode(w, r, "/v1/jwtsvid", &req) {
		return
	}
	caller, err := s.httpAuthenticate(r, "/v1/jwtsvid")
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	svid, err := s.fetchJWT(r.Context(), caller, req.Audience, req.SPIFFEID)
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	s.cfg.Observe.Called(httpMethod(r), codes.OK)
	writeJSON(w, http.StatusOK, jwtSVIDResponse{SPIFFEID: svid.SPIFFEID, Token: svid.Token, ExpiresAt: svid.ExpiresAt.UTC()})
}

func (s *Server) httpValidate(w http.ResponseWriter, r *http.Request) {
	var req validateRequest
	if !s.httpDecode(w, r, "/v1/validate", &req) {
		return
	}
	if _, err := s.httpAuthenticate(r, "/v1/validate"); err != nil {
		s.httpError(w, r, err)
		return
	}
	v, err := s.validate(req.Token, req.Audience)
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	claims := v.claims.AsMap()
	delete(claims, AttributesClaim) // a field of its own here
	s.cfg.Observe.Called(httpMethod(r), codes.OK)
	writeJSON(w, http.StatusOK, validateResponse{SPIFFEID: v.svid.ID.String(), Claims: claims, Attributes: v.attributes})
}

// httpDecode checks the security header and reads a JSON body of at most maxHTTPBody into v.
func (s *Server) httpDecode(w http.ResponseWriter, r *http.Request, path string, v any) bool {
	if r.Header.Get(HTTPSecurityHeader) != "true" {
		s.httpError(w, r, errNoHeader)
		return false
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		s.httpError(w, r, invalid(fmt.Sprintf("content type %q is not application/json", ct)))
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxHTTPBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			s.httpError(w, r, apiError{codes.InvalidArgument, fmt.Sprintf("request body larger than %d bytes", maxHTTPBody)})
		case errors.Is(err, io.EOF):
			s.httpError(w, r, invalid("request body is empty; want a JSON object"))
		default:
			s.httpError(w, r, invalid("request body is not the JSON object "+path+" takes: "+err.Error()))
		}
		return false
	}
	return true
}

// httpAuthenticate identifies the caller of an HTTP request.
func (s *Server) httpAuthenticate(r *http.Request, path string) (identity.Caller, error) {
	tok := ""
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		tok = strings.TrimSpace(t)
	}
	return s.identify(r.Context(), tok, path)
}

func (s *Server) httpError(w http.ResponseWriter, r *http.Request, err error) {
	st := status.Convert(grpcError(err))
	ae := apiError{st.Code(), st.Message()}
	s.cfg.Observe.Called(httpMethod(r), ae.code)
	writeJSON(w, httpStatus(ae.code), httpErrorBody{Error: ae.msg, Code: ae.code.String()})
}

// httpMethod names a request in metrics by the pattern that matched it ("/v1/jwtsvid",
// "/v1/validate", or "/" for anything else): a bounded set, whatever paths callers send.
func httpMethod(r *http.Request) string { return strings.TrimPrefix(r.Pattern, "POST ") }

func httpStatus(c codes.Code) int {
	switch c {
	case codes.InvalidArgument:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.FailedPrecondition:
		return http.StatusPreconditionFailed
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

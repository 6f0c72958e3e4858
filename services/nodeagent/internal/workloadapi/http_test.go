package workloadapi_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/workloadapi"
)

// httpCall posts body to path on the HTTP socket at sock and decodes the JSON answer.
func httpCall(tb testing.TB, sock, path, body string, header map[string]string) (int, map[string]any) {
	tb.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, "http://workload-api"+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(workloadapi.HTTPSecurityHeader, "true")
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		tb.Fatalf("%s answered %d with a body that is not JSON: %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

func TestHTTPJWTSVIDAndValidate(t *testing.T) {
	h := newHarness(t, options{})
	// cart on its own socket, web by its token on the shared socket: both kinds of evidence.
	code, got := httpCall(t, h.httpPod[cart.PodUID], "/v1/jwtsvid", `{"audience": ["web"]}`, nil)
	if code != http.StatusOK || got["spiffe_id"] != cartID.String() {
		t.Fatalf("POST /v1/jwtsvid: %d %v", code, got)
	}
	tok, _ := got["token"].(string)
	exp, err := time.Parse(time.RFC3339, got["expires_at"].(string))
	if err != nil || exp.Before(time.Now()) {
		t.Fatalf("expires_at %v: %v", got["expires_at"], err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, h.bundles, []string{"web"}); err != nil {
		t.Fatalf("the token from the HTTP API does not validate: %v", err)
	}

	body, _ := json.Marshal(map[string]string{"token": tok, "audience": "web"})
	code, got = httpCall(t, h.httpSocket, "/v1/validate", string(body), map[string]string{"Authorization": "Bearer " + h.token(t, web)})
	attrs, _ := got["attributes"].(map[string]any)
	claims, _ := got["claims"].(map[string]any)
	if code != http.StatusOK || got["spiffe_id"] != cartID.String() || attrs["tenant"] != "acme" || attrs["serviceAccount"] != "cart" ||
		claims["sub"] != cartID.String() {
		t.Fatalf("POST /v1/validate: %d %v", code, got)
	}
}

func TestHTTPErrors(t *testing.T) {
	h := newHarness(t, options{})
	pod := h.httpPod[cart.PodUID]
	for _, tc := range []struct {
		name, sock, path, body string
		header                 map[string]string
		status                 int
		code, msg              string
	}{
		{"missing security header", pod, "/v1/jwtsvid", `{"audience":["web"]}`, map[string]string{workloadapi.HTTPSecurityHeader: ""},
			http.StatusBadRequest, "InvalidArgument", "security header missing from request"},
		{"no identity", h.httpSocket, "/v1/jwtsvid", `{"audience":["web"]}`, nil,
			http.StatusForbidden, "PermissionDenied", "no identity issued"},
		{"a token of a pod not on this node", h.httpSocket, "/v1/jwtsvid", `{"audience":["web"]}`,
			map[string]string{"Authorization": "Bearer " + h.token(t, ghost)}, http.StatusForbidden, "PermissionDenied", "no identity issued"},
		{"no audience", pod, "/v1/jwtsvid", `{"audience":[]}`, nil, http.StatusBadRequest, "InvalidArgument", "audience must be specified"},
		{"unknown field", pod, "/v1/jwtsvid", `{"audiences":["web"]}`, nil, http.StatusBadRequest, "InvalidArgument",
			`request body is not the JSON object /v1/jwtsvid takes: json: unknown field "audiences"`},
		{"unknown path", pod, "/v1/jwt", `{}`, nil, http.StatusNotFound, "NotFound",
			"no POST /v1/jwt: this API serves POST /v1/jwtsvid and POST /v1/validate"},
		{"empty body", pod, "/v1/validate", ``, nil, http.StatusBadRequest, "InvalidArgument", "request body is empty; want a JSON object"},
		{"empty token", pod, "/v1/validate", `{"audience":"web"}`, nil, http.StatusBadRequest, "InvalidArgument", "svid must be specified"},
		{"oversized body", pod, "/v1/validate", `{"audience":"web","token":"` + strings.Repeat("A", 64<<10) + `"}`, nil,
			http.StatusBadRequest, "InvalidArgument", "request body larger than 20480 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, got := httpCall(t, tc.sock, tc.path, tc.body, tc.header)
			if status != tc.status || got["code"] != tc.code || got["error"] != tc.msg {
				t.Fatalf("got %d %v, want %d %s %q", status, got, tc.status, tc.code, tc.msg)
			}
		})
	}
}

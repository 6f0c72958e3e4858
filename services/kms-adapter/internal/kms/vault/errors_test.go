package vault

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// The real-Vault tests produce most of these answers; this table pins the wording of each class.
func TestClassify(t *testing.T) {
	resp := func(code int, msgs ...string) error {
		return &api.ResponseError{HTTPMethod: "PUT", URL: "http://v/v1/pki/sign/r", StatusCode: code, Errors: msgs}
	}
	for _, tc := range []struct {
		name   string
		err    error
		target error
		want   []string
	}{
		{"sealed", resp(503, "Vault is sealed"), kms.ErrUnavailable, []string{"pki/sign/r", "status 503", "vault is sealed"}},
		{"unreachable", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, kms.ErrUnavailable, []string{"pki/sign/r", "unreachable", "connection refused"}},
		{"denied", resp(403, "1 error occurred:\n\t* permission denied\n\n"), errPermission, []string{"status 403", "policy", "path): permission denied"}},
		{"role", resp(400, "unknown role: r"), kms.ErrUnavailable, []string{"status 400", "pki role missing"}},
		{"issuer", resp(400, "cannot satisfy request, as TTL would result in notAfter of x that is beyond the expiration of the CA certificate at y"), kms.ErrUnavailable, []string{"issuer expires"}},
		{"no mount", resp(404, "no handler for route"), kms.ErrUnavailable, []string{"status 404", "no such path"}},
		{"csr", resp(400, "role requires keys of type ec"), kms.ErrInvalidCSR, []string{"status 400", "key"}},
		{"cancelled", context.Canceled, context.Canceled, []string{"pki/sign/r"}},
	} {
		err := classify("write", "pki/sign/r", tc.err)
		if !errors.Is(err, tc.target) {
			t.Errorf("%s: %v is not %v", tc.name, err, tc.target)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", tc.name, err, w)
			}
		}
	}
	if err := classify("write", "p", context.Canceled); errors.Is(err, kms.ErrUnavailable) {
		t.Errorf("a cancelled call is reported as an outage: %v", err)
	}
}

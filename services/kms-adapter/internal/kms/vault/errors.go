package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/api"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// errPermission marks a 403 from Vault: the token expired, was revoked, or lacks a policy. The
// backend re-authenticates on it (a lost lease), and the error stays ErrUnavailable.
var errPermission = errors.New("permission denied")

// classify turns an error of a call to Vault at path into a kms error that names the path, the
// HTTP status and what it most likely means. Vault's own messages are kept: they name the role,
// the TTL or the policy that is wrong. Every error of this package that is not the caller's fault
// wraps kms.ErrUnavailable.
func classify(op, path string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("vault %s %s: %w", op, path, err)
	}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		// No HTTP answer: connection refused, DNS, TLS, timeout.
		return fmt.Errorf("%w: vault %s %s: unreachable: %v", kms.ErrUnavailable, op, path, err)
	}
	msg := cleanMessage(re.Errors)
	switch {
	case re.StatusCode == http.StatusForbidden && strings.HasSuffix(path, "/login"):
		return fmt.Errorf("%w: vault %s %s: status %d: credentials refused: %s", kms.ErrUnavailable, op, path, re.StatusCode, msg)
	case re.StatusCode == http.StatusServiceUnavailable && strings.Contains(msg, "sealed"):
		return fmt.Errorf("%w: vault %s %s: status %d: vault is sealed", kms.ErrUnavailable, op, path, re.StatusCode)
	case re.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: vault %s %s: status %d: %w (token expired or revoked, or its policy does not allow this path): %s",
			kms.ErrUnavailable, op, path, re.StatusCode, errPermission, msg)
	case strings.Contains(msg, "unknown role") || strings.Contains(msg, "role not found"):
		return fmt.Errorf("%w: vault %s %s: status %d: pki role missing: %s", kms.ErrUnavailable, op, path, re.StatusCode, msg)
	case strings.Contains(msg, "beyond the expiration of the CA"):
		return fmt.Errorf("%w: vault %s %s: status %d: the issuer expires before the requested ttl: %s", kms.ErrUnavailable, op, path, re.StatusCode, msg)
	case re.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: vault %s %s: status %d: no such path (is the pki mount or auth method enabled?): %s", kms.ErrUnavailable, op, path, re.StatusCode, msg)
	case re.StatusCode == http.StatusBadRequest && isCSRRefusal(msg):
		return fmt.Errorf("%w: vault %s %s: status %d: %s", kms.ErrInvalidCSR, op, path, re.StatusCode, msg)
	}
	return fmt.Errorf("%w: vault %s %s: status %d: %s", kms.ErrUnavailable, op, path, re.StatusCode, msg)
}

// cleanMessage joins Vault's error strings on one line; Vault wraps some in a multi-line
// "1 error occurred:\n\t* ..." list.
func cleanMessage(errs []string) string {
	var parts []string
	for _, e := range errs {
		for _, line := range strings.Split(e, "\n") {
			line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "* "))
			if line == "" || strings.HasSuffix(line, "error occurred:") || strings.HasSuffix(line, "errors occurred:") {
				continue
			}
			parts = append(parts, line)
		}
	}
	return strings.Join(parts, "; ")
}

// isCSRRefusal recognises Vault refusing the CSR itself (key type or size the role does not allow);
// CheckCSR has already refused what kms refuses, so this is a role stricter than kms.
func isCSRRefusal(msg string) bool {
	for _, s := range []string{"csr", "certificate request", "keys of type", "key type", "key bits", "public key"} {
		if strings.Contains(strings.ToLower(msg), s) {
			return true
		}
	}
	return false
}

// isPermission reports whether err came from a 403.
func isPermission(err error) bool { return errors.Is(err, errPermission) }

// unexpected is an answer from Vault that kms-adapter cannot use (an empty mount, a malformed
// certificate): Vault works, but not as configured.
func unexpected(op, path, what string) error {
	return fmt.Errorf("%w: vault %s %s: %s", kms.ErrUnavailable, op, path, what)
}

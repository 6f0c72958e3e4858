package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// The operator CLI drives kms-adapter's admin API, and only the admin identity may.
func TestOperatorCLI(t *testing.T) {
	s, _ := startStack(t)
	admin, err := s.AdminFiles()
	if err != nil {
		t.Fatal(err)
	}
	ctl := func(files servicetls.Files, args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "portcullisctl"), append([]string{"-kms-addr", s.Addr(stack.KMSAdapter),
			"-tls-cert", files.CertFile, "-tls-key", files.KeyFile, "-tls-ca", files.CAFile}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct {
		args    []string
		ok      bool
		contain string
	}{
		{[]string{"status"}, true, "bundle version  1"},
		{[]string{"rotate-ca", "activate"}, false, "FailedPrecondition"},
		{[]string{"rotate-ca", "prepare"}, true, "next root"},
		{[]string{"rotate-ca", "retire"}, false, "no previous root"},
		{[]string{"force-rotate", "-reason", "drill", "spiffe://cluster.local/ns/shop/sa/cart"}, true, "force-rotation of spiffe://cluster.local/ns/shop/sa/cart announced"},
		{[]string{"revoke", "spiffe://other.domain/ns/shop/sa/cart"}, false, "InvalidArgument"},
		{[]string{"revoke", "spiffe://cluster.local/ns/shop/sa/cart"}, true, "revoked"},
	} {
		out, err := ctl(admin, tc.args...)
		if (err == nil) != tc.ok || !strings.Contains(out, tc.contain) {
			t.Errorf("portcullisctl %v: err %v, output %q; want success=%v and %q", tc.args, err, out, tc.ok, tc.contain)
		}
	}
	citadelID := spiffeid.RequireFromSegments(s.TrustDomain(), "portcullis", servicetls.Citadel)
	files, err := s.CA().Issue(filepath.Join(s.Dir(), "certs"), "not-admin", citadelID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ctl(files, "status"); err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("citadel's identity used the admin API: err %v, output %q", err, out)
	}
}

package config

import (
	"strings"
	"testing"
)

func TestCSIOffByDefault(t *testing.T) {
	if c := valid(t); c.CSI.Enabled() {
		t.Fatalf("CSI on by default: %+v", c.CSI)
	}
}

func TestCSIStateDirDefaultsToTheEndpointsDir(t *testing.T) {
	c := valid(t)
	c.CSI.Endpoint = "/var/lib/kubelet/plugins/csi.portcullis.io/csi.sock"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.CSI.State(); got != "/var/lib/kubelet/plugins/csi.portcullis.io" {
		t.Errorf("State() = %q", got)
	}
}

func TestCSIRejectsRelativePaths(t *testing.T) {
	c := valid(t)
	c.CSI = CSI{Endpoint: "csi.sock", RegistrationDir: "reg", StateDir: "state"}
	err := c.Validate()
	for _, want := range []string{`-csi-endpoint "csi.sock"`, `-csi-registration-dir "reg"`, `-csi-state-dir "state"`, "-csi-driver-name is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want %q", err, want)
		}
	}
}

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

// The kubelet cannot mount a volume whose socket the agent cannot bind: a state directory so long
// that a pod's socket path would not fit a Unix socket address is refused at start.
func TestCSIRefusesAStateDirTooLongForPodSockets(t *testing.T) {
	c := valid(t)
	c.CSI.Endpoint = "/var/lib/kubelet/plugins/csi.portcullis.io/csi.sock"
	c.CSI.StateDir = "/var/lib/kubelet/plugins/a-rather-long-driver-name.portcullis.example.com"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-csi-state-dir") || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("Validate = %v; want the state directory refused as too long", err)
	}
}

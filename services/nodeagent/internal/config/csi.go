package config

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
)

// CSI configures the agent as a CSI node plugin that gives each pod a socket of its own through
// an ephemeral inline volume (package csi). It is off unless -csi-endpoint is set.
type CSI struct {
	DriverName      string
	Endpoint        string
	RegistrationDir string
	StateDir        string
}

// RegisterFlags binds the -csi-* flags.
func (c *CSI) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.DriverName, "csi-driver-name", "csi.portcullis.io", "CSI driver name: the CSIDriver object's, and what pods put in volumes[].csi.driver")
	fs.StringVar(&c.Endpoint, "csi-endpoint", "", "CSI socket path as the kubelet sees it, e.g. /var/lib/kubelet/plugins/csi.portcullis.io/csi.sock; empty: the CSI driver is off")
	fs.StringVar(&c.RegistrationDir, "csi-registration-dir", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registration directory")
	fs.StringVar(&c.StateDir, "csi-state-dir", "", "directory of the per-pod sockets and their records (must outlive the agent: a hostPath); default: the -csi-endpoint's directory")
}

// Enabled reports whether the agent is a CSI driver.
func (c *CSI) Enabled() bool { return c.Endpoint != "" }

// State is the state directory, defaulted.
func (c *CSI) State() string {
	if c.StateDir != "" {
		return c.StateDir
	}
	return filepath.Dir(c.Endpoint)
}

// Validate checks the paths; the CSI package checks the rest when the agent starts.
func (c *CSI) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	for _, f := range []struct{ flag, path string }{
		{"-csi-endpoint", c.Endpoint}, {"-csi-registration-dir", c.RegistrationDir}, {"-csi-state-dir", c.State()},
	} {
		if !filepath.IsAbs(f.path) {
			errs = append(errs, fmt.Errorf("%s %q: want an absolute path", f.flag, f.path))
		}
	}
	if c.DriverName == "" {
		errs = append(errs, errors.New("-csi-driver-name is required with -csi-endpoint"))
	}
	// The longest per-pod socket path, <state>/pods/<uid>/sock/http.sock, must fit a Unix socket
	// address (108 bytes with its NUL); the kubelet's default directory leaves 9 bytes spare.
	longest := filepath.Join(c.State(), "pods", "00000000-0000-0000-0000-000000000000", "sock", HTTPSocketName)
	if len(longest) > maxUnixSocketPath {
		errs = append(errs, fmt.Errorf("-csi-state-dir %q is too long: a pod's socket would be %s (%d bytes), a Unix socket path has at most %d",
			c.State(), longest, len(longest), maxUnixSocketPath))
	}
	return errors.Join(errs...)
}

// maxUnixSocketPath is the longest path a Unix socket can be bound to on Linux.
const maxUnixSocketPath = 107

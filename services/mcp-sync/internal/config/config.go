// Package config holds mcp-sync's configuration: flags (and PORTCULLIS_<FLAG> environment
// variables, via lifecycle.Main) and their validation.
package config

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source"
)

// Config is mcp-sync's configuration.
type Config struct {
	Listen       string
	AdminListen  string
	Source       string
	ManifestsDir string
	Resync       time.Duration
	Kubeconfig   string
	// GatewayCertificates turns on the gateway certificate controller (-source=kube only).
	GatewayCertificates bool
	// GatewayReviewTTL is how long a SubjectAccessReview answer is reused.
	GatewayReviewTTL time.Duration
	TLS              servicetls.Files
}

// RegisterFlags binds the configuration to fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:15010", "address of the MCP (xDS over gRPC, mTLS) server")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:15011", "address of /metrics, /healthz and /readyz")
	fs.StringVar(&c.Source, "source", "file", fmt.Sprintf("where cluster objects come from: %v", source.Names()))
	fs.StringVar(&c.ManifestsDir, "manifests-dir", "", "directory of Kubernetes manifests (required for -source=file)")
	fs.DurationVar(&c.Resync, "resync", 30*time.Second, "period of the file source's full rescan, a safety net for missed file events")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file for -source=kube; empty means the in-cluster service account")
	fs.BoolVar(&c.GatewayCertificates, "gateway-certificates", true, "with -source=kube, serve the kubernetes.io/tls Secrets labelled portcullis.dev/gateway-certificate=true to the gateways allowed to read them")
	fs.DurationVar(&c.GatewayReviewTTL, "gateway-review-ttl", time.Minute, "how long a SubjectAccessReview answer (may this service account get that Secret) is reused; a RoleBinding change takes effect within it")
	c.TLS.RegisterFlags(fs)
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("-listen is required"))
	}
	if c.AdminListen == "" {
		errs = append(errs, errors.New("-admin-listen is required"))
	}
	if err := source.CheckName(c.Source); err != nil {
		errs = append(errs, fmt.Errorf("-source: %w", err))
	}
	if c.Source == "file" && c.ManifestsDir == "" {
		errs = append(errs, errors.New("-manifests-dir is required with -source=file"))
	}
	if c.Kubeconfig != "" && c.Source != "kube" {
		errs = append(errs, fmt.Errorf("-kubeconfig is only used with -source=kube, not -source=%s", c.Source))
	}
	if c.Resync <= 0 {
		errs = append(errs, fmt.Errorf("-resync must be positive, got %s", c.Resync))
	}
	if c.Source == "kube" && c.GatewayCertificates && c.GatewayReviewTTL <= 0 {
		errs = append(errs, fmt.Errorf("-gateway-review-ttl must be positive, got %s", c.GatewayReviewTTL))
	}
	errs = append(errs, c.TLS.Validate())
	return errors.Join(errs...)
}

package config

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// Node attestation defaults. The audience keeps attestation tokens apart from workload tokens:
// a workload's token cannot attest a node, and the agent's token cannot obtain a workload
// identity.
const (
	DefaultAttestAudience = "portcullis-nodeagent"
	DefaultAttestTTL      = 24 * time.Hour
)

// Attest configures node attestation (see internal/attest): how node agents in a cluster obtain
// their control-plane certificates. Off when Listen is empty.
type Attest struct {
	Listen         string
	CACert         string
	CAKey          string
	Audience       string
	ServiceAccount string // "<namespace>/<name>"
	TTL            time.Duration
}

// RegisterFlags binds the -attest-* flags.
func (a *Attest) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.Listen, "attest-listen", "", "address of the node attestation service (TLS, no client certificate); empty: off")
	fs.StringVar(&a.CACert, "attest-ca-cert", "", "control-plane CA certificate (PEM) that signs attested node agent certificates")
	fs.StringVar(&a.CAKey, "attest-ca-key", "", "private key (PEM) of -attest-ca-cert")
	fs.StringVar(&a.Audience, "attest-audience", DefaultAttestAudience, "audience that node agents' projected service-account tokens must carry")
	fs.StringVar(&a.ServiceAccount, "attest-service-account", "", `"namespace/name" of the node agents' ServiceAccount (required with -attest-listen)`)
	fs.DurationVar(&a.TTL, "attest-ttl", DefaultAttestTTL, "lifetime of attested node agent certificates (cut at the CA's expiry)")
}

// Enabled reports whether node attestation is served.
func (a *Attest) Enabled() bool { return strings.TrimSpace(a.Listen) != "" }

// Validate reports every problem at once; nothing is checked when attestation is off.
func (a *Attest) Validate() error {
	if !a.Enabled() {
		return nil
	}
	var errs []error
	if a.CACert == "" || a.CAKey == "" {
		errs = append(errs, errors.New("-attest-ca-cert and -attest-ca-key are required with -attest-listen"))
	}
	if strings.TrimSpace(a.Audience) == "" {
		errs = append(errs, errors.New("-attest-audience must not be empty"))
	}
	ns, name, ok := strings.Cut(a.ServiceAccount, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		errs = append(errs, fmt.Errorf("-attest-service-account %q: want \"namespace/name\" of the node agents' ServiceAccount", a.ServiceAccount))
	}
	// A minute leaves the agent time to renew at half-life; a year is far past any sane node
	// certificate (the agent renews well before anyway).
	if a.TTL < time.Minute || a.TTL > 365*24*time.Hour {
		errs = append(errs, fmt.Errorf("-attest-ttl %s out of range [1m, 8760h]", a.TTL))
	}
	return errors.Join(errs...)
}

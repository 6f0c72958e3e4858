package config

import (
	"errors"
	"flag"
)

// DefaultAttestTokenFile is where the chart projects the agent's service-account token for
// node attestation.
const DefaultAttestTokenFile = "/var/run/secrets/portcullis/attest/token"

// Attest configures node attestation: with Addr set, the agent obtains its control-plane
// certificate from citadel with its projected token instead of reading -tls-cert/-tls-key.
type Attest struct {
	Addr      string
	TokenFile string
}

// RegisterFlags binds -attest-addr and -attest-token-file.
func (a *Attest) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.Addr, "attest-addr", "", "citadel's node attestation address; when set, the control-plane certificate is obtained by attestation (only -tls-ca is read)")
	fs.StringVar(&a.TokenFile, "attest-token-file", DefaultAttestTokenFile, "projected service-account token presented for node attestation (re-read at every renewal)")
}

// Enabled reports whether the agent attests.
func (a *Attest) Enabled() bool { return a.Addr != "" }

// validateTLS wants the three files, or with attestation only the CA (the certificate and key are
// made in memory) and the token file.
func (c *Config) validateTLS() error {
	if !c.Attest.Enabled() {
		return c.TLS.Validate()
	}
	var errs []error
	if c.TLS.CAFile == "" {
		errs = append(errs, errors.New("-tls-ca is required: it verifies citadel's attest server"))
	}
	if c.TLS.CertFile != "" || c.TLS.KeyFile != "" {
		errs = append(errs, errors.New("-tls-cert and -tls-key exclude -attest-addr: the certificate comes from attestation"))
	}
	if c.Attest.TokenFile == "" {
		errs = append(errs, errors.New("-attest-token-file is required with -attest-addr"))
	}
	return errors.Join(errs...)
}

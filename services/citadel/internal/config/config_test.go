package config

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, args ...string) *Config {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("citadel", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &c
}

var valid = []string{
	"-kms-addr", "127.0.0.1:1", "-mcp-addr", "127.0.0.1:2", "-token-issuer", "https://kubernetes.default.svc",
	"-token-jwks-file", "/jwks.json", "-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-ca", "ca.pem",
}

func TestDefaults(t *testing.T) {
	c := parse(t, valid...)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:15012" || c.AdminListen != "127.0.0.1:15014" || c.DefaultTTL != 24*time.Hour ||
		c.MaxTTL != 2160*time.Hour || c.CacheSize != 100000 || c.BundleRefresh != 30*time.Second ||
		c.JWTDefaultTTL != 5*time.Minute || c.JWTMaxTTL != time.Hour {
		t.Errorf("unexpected defaults: %+v", c)
	}
	if got := c.Audiences(); !slices.Equal(got, []string{"portcullis"}) {
		t.Errorf("audiences = %v", got)
	}
}

func TestAudienceList(t *testing.T) {
	c := parse(t, append(slices.Clone(valid), "-token-audience", "a, b,,c")...)
	if got := c.Audiences(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("audiences = %v", got)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := parse(t, "-max-ttl", "1h", "-cache-size", "0", "-token-audience", ",", "-jwt-default-ttl", "2h")
	err := c.Validate()
	if err == nil {
		t.Fatal("empty config validated")
	}
	for _, want := range []string{"-kms-addr", "-mcp-addr", "-token-issuer", "-token-jwks-file", "-token-audience",
		"-max-ttl", "-cache-size", "-tls-cert", "-jwt-default-ttl (2h0m0s) must be positive and at most -jwt-max-ttl (1h0m0s)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

func TestAttestFlags(t *testing.T) {
	var a Attest
	fs := flag.NewFlagSet("citadel", flag.ContinueOnError)
	a.RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Validate(); err != nil {
		t.Fatalf("attestation off by default must validate: %v", err)
	}
	if a.Audience != "portcullis-nodeagent" || a.TTL != 24*time.Hour {
		t.Errorf("defaults = %q, %s", a.Audience, a.TTL)
	}
	if err := fs.Parse([]string{"-attest-listen", ":15013", "-attest-service-account", "portcullis", "-attest-ttl", "10s"}); err != nil {
		t.Fatal(err)
	}
	err := a.Validate()
	for _, want := range []string{"-attest-ca-cert", "-attest-service-account \"portcullis\"", "-attest-ttl 10s"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to name %s", err, want)
		}
	}
}

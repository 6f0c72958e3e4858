package config

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, args ...string) *Config {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("mcp-sync", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &c
}

var tlsFlags = []string{"-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-ca", "ca.pem"}

func TestDefaults(t *testing.T) {
	c := parse(t, append(tlsFlags, "-manifests-dir", "m")...)
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if c.Listen != "127.0.0.1:15010" || c.AdminListen != "127.0.0.1:15011" || c.Source != "file" || c.Resync != 30*time.Second {
		t.Errorf("defaults = %+v", c)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := parse(t, "-source", "etcd", "-resync", "0s")
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted a bad configuration")
	}
	for _, want := range []string{`unknown source "etcd"`, "-resync", "-tls-cert"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	c = parse(t, tlsFlags...)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-manifests-dir") {
		t.Errorf("Validate without -manifests-dir = %v", err)
	}
}

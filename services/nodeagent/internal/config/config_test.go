package config

import (
	"flag"
	"io"
	"strings"
	"testing"
)

// valid is a config that passes, built from the real flags and their defaults.
func valid(t *testing.T) Config {
	t.Helper()
	t.Setenv("NODE_NAME", "")
	var c Config
	fs := flag.NewFlagSet("nodeagent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{
		"-node-name=node-a", "-token-issuer=https://kubernetes.default.svc", "-token-jwks-file=/etc/jwks.json",
		"-tls-cert=/etc/tls/cert.pem", "-tls-key=/etc/tls/key.pem", "-tls-ca=/etc/tls/ca.pem",
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("baseline config refused: %v", err)
	}
	return c
}

func TestDefaultsAreIstioCompatible(t *testing.T) {
	c := valid(t)
	if c.Socket != "./var/run/secrets/workload-spiffe-uds/socket" || c.KeyType != "ecdsa-p256" || c.SocketMode != "0660" {
		t.Fatalf("defaults: socket %q, key %q, mode %q", c.Socket, c.KeyType, c.SocketMode)
	}
}

func TestNodeNameFromEnvironment(t *testing.T) {
	t.Setenv("NODE_NAME", "node-from-env")
	var c Config
	c.RegisterFlags(flag.NewFlagSet("nodeagent", flag.ContinueOnError))
	if c.NodeName != "node-from-env" {
		t.Fatalf("NodeName = %q, want $NODE_NAME", c.NodeName)
	}
}

func TestValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // part of the message: it must name the flag
	}{
		{"missing node name", func(c *Config) { c.NodeName = "" }, "-node-name"},
		{"missing socket", func(c *Config) { c.Socket = "" }, "-socket"},
		{"http socket on the sds socket", func(c *Config) { c.WorkloadAPI.HTTPSocket = c.Socket }, "-http-socket"},
		{"world-readable socket", func(c *Config) { c.SocketMode = "0664" }, "-socket-mode"},
		{"world-writable socket", func(c *Config) { c.SocketMode = "0662" }, "-socket-mode"},
		{"world-accessible socket", func(c *Config) { c.SocketMode = "0777" }, "-socket-mode"},
		{"world-only socket bit", func(c *Config) { c.SocketMode = "0601" }, "-socket-mode"},
		{"owner cannot write", func(c *Config) { c.SocketMode = "0440" }, "-socket-mode"},
		{"mode not octal", func(c *Config) { c.SocketMode = "rw-rw----" }, "-socket-mode"},
		{"mode with 8", func(c *Config) { c.SocketMode = "0680" }, "-socket-mode"},
		{"unknown key type", func(c *Config) { c.KeyType = "ecdsa-p384" }, "-key-type"},
		{"weak rsa key", func(c *Config) { c.KeyType = "rsa-1024" }, "-key-type"},
		{"empty key type", func(c *Config) { c.KeyType = "" }, "-key-type"},
		{"key type case", func(c *Config) { c.KeyType = "ECDSA-P256" }, "-key-type"},
		{"no token issuer", func(c *Config) { c.TokenIssuer = "" }, "-token-issuer"},
		{"only blank audiences", func(c *Config) { c.TokenAudience = " , " }, "-token-audience"},
		{"ttl too short", func(c *Config) { c.CertTTL = 30e9 }, "-cert-ttl"},
		{"jitter too wide", func(c *Config) { c.RenewJitter = 0.3 }, "-renew-jitter"},
		{"no jitter", func(c *Config) { c.RenewJitter = 0 }, "-renew-jitter"},
		{"no mTLS", func(c *Config) { c.TLS.CAFile = "" }, "-tls-ca"},
		{"no first-request deadline", func(c *Config) { c.SDS.FirstRequestTimeout = 0 }, "-sds-first-request-timeout"},
		{"no unauthenticated streams", func(c *Config) { c.SDS.MaxUnauthenticated = 0 }, "-sds-max-unauthenticated-streams"},
		{"no streams per connection", func(c *Config) { c.SDS.MaxStreamsPerConn = -1 }, "-sds-max-streams-per-conn"},
		{"no streams per pod", func(c *Config) { c.SDS.MaxStreamsPerPod = 0 }, "-sds-max-streams-per-pod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid(t)
			tc.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %s", err, tc.want)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"owner-only socket", func(c *Config) { c.SocketMode = "0600" }},
		{"group-readable socket", func(c *Config) { c.SocketMode = "0640" }},
		{"mode without leading zero", func(c *Config) { c.SocketMode = "660" }},
		{"rsa keys", func(c *Config) { c.KeyType = "rsa-2048" }},
		{"several audiences", func(c *Config) { c.TokenAudience = "istio-ca, portcullis" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid(t)
			tc.mutate(&c)
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate refused: %v", err)
			}
		})
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	c := valid(t)
	c.NodeName, c.SocketMode, c.KeyType = "", "0666", "dsa"
	err := c.Validate()
	for _, flag := range []string{"-node-name", "-socket-mode", "-key-type"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("error %v does not report %s", err, flag)
		}
	}
}

func TestModeAndAudiences(t *testing.T) {
	c := valid(t)
	c.SocketMode = "0640"
	if m, err := c.Mode(); err != nil || m != 0o640 {
		t.Fatalf("Mode() = %o, %v; want 640", m, err)
	}
	c.TokenAudience = " istio-ca ,, portcullis "
	if got := c.Audiences(); len(got) != 2 || got[0] != "istio-ca" || got[1] != "portcullis" {
		t.Fatalf("Audiences() = %q", got)
	}
}

func TestAttestation(t *testing.T) {
	c := valid(t)
	c.Attest.Addr = "citadel:15013"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-tls-cert and -tls-key exclude -attest-addr") {
		t.Fatalf("Validate with both files and -attest-addr: %v", err)
	}
	c.TLS.CertFile, c.TLS.KeyFile = "", ""
	if err := c.Validate(); err != nil {
		t.Fatalf("attested agent with only -tls-ca refused: %v", err)
	}
	if c.Attest.TokenFile != "/var/run/secrets/portcullis/attest/token" {
		t.Errorf("-attest-token-file default = %q", c.Attest.TokenFile)
	}
	c.TLS.CAFile = ""
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-tls-ca is required") {
		t.Fatalf("Validate without -tls-ca: %v", err)
	}
}

func TestHTTPSocketSitsNextToTheSDSSocket(t *testing.T) {
	c := valid(t)
	c.Socket = "/var/run/secrets/workload-spiffe-uds/socket"
	if got := c.HTTPSocketPath(); got != "/var/run/secrets/workload-spiffe-uds/http.sock" {
		t.Fatalf("default http socket %q", got)
	}
	c.WorkloadAPI.HTTPSocket = "-"
	if got := c.HTTPSocketPath(); got != "" {
		t.Fatalf("-http-socket=- serves on %q", got)
	}
}

package config_test

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/config"
)

func parse(t *testing.T, args ...string) *config.Config {
	t.Helper()
	var c config.Config
	fs := flag.NewFlagSet("kms-adapter", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &c
}

var tlsArgs = []string{"-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-ca", "ca.pem"}

func TestDefaults(t *testing.T) {
	c := parse(t, tlsArgs...)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	want := config.Config{Listen: "127.0.0.1:15030", AdminListen: "127.0.0.1:15031", Backend: "local",
		StateDir: "./var/lib/portcullis/kms", DefaultTTL: 24 * time.Hour, MaxTTL: 2160 * time.Hour, RootTTL: 8760 * time.Hour,
		TLS: c.TLS, NATSEmbedded: true, NATSListen: "127.0.0.1:4222", NATSStoreDir: "./var/lib/portcullis/nats", ExpiryWarning: time.Hour,
		Vault: config.Vault{Mount: "pki", Mode: "leaf", IntermediateTTL: 720 * time.Hour, Auth: "token",
			K8sJWTFile: "/var/run/secrets/kubernetes.io/serviceaccount/token"},
		JWTAlgorithm: "ES256", JWTKeyTTL: 24 * time.Hour, JWTMaxTTL: time.Hour}
	if *c != want {
		t.Errorf("defaults = %+v, want %+v", *c, want)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-default-ttl", "100h", "-max-ttl", "10h"}, "must not exceed -max-ttl"},
		{[]string{"-default-ttl", "0s"}, "must be positive"},
		{[]string{"-nats-store-dir", ""}, "embedded NATS needs"},
		{[]string{"-nats-user", "kms"}, "-nats-user and -nats-password-file go together"},
		{[]string{"-nats-creds-file", "c", "-nats-nkey-file", "n"}, "use one of"},
		{[]string{"-expiry-warning", "0s"}, "-expiry-warning"},
		{[]string{"-max-ttl", "5000h"}, "-root-ttl (8760h0m0s) must exceed twice -max-ttl"},
		{[]string{"-state-dir", ""}, "-state-dir is required"},
		{[]string{"-jwt-algorithm", "none"}, `-jwt-algorithm: jwt signing algorithm "none" not supported`},
		{[]string{"-jwt-max-ttl", "13h"}, "-jwt-key-ttl (24h0m0s) more than twice it"},
		{[]string{"-backend", ""}, "-backend is required"},
		{[]string{"-backend", "vault", "-vault-role", "r"}, "-vault-addr is required"},
		{[]string{"-backend", "vault", "-vault-addr", "http://v"}, "-vault-role is required in -vault-mode leaf"},
		{[]string{"-backend", "vault", "-vault-addr", "http://v", "-vault-mode", "both"}, `-vault-mode "both"`},
		{[]string{"-backend", "vault", "-vault-addr", "http://v", "-vault-mode", "intermediate", "-vault-intermediate-ttl", "24h"}, "-vault-intermediate-ttl (24h0m0s) must exceed twice -default-ttl"},
		{[]string{"-backend", "vault", "-vault-addr", "http://v", "-vault-role", "r", "-vault-auth", "approle"}, "needs -vault-role-id and -vault-secret-id-file"},
		{[]string{"-backend", "vault", "-vault-addr", "http://v", "-vault-role", "r", "-vault-auth", "kubernetes", "-vault-k8s-jwt-file", ""}, "needs -vault-k8s-role"},
		{[]string{"-backend", "vault", "-vault-addr", "http://v", "-vault-role", "r", "-vault-auth", "ldap"}, `-vault-auth "ldap"`},
	} {
		err := parse(t, append(tc.args, tlsArgs...)...).Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
	vaultOK := append([]string{"-backend", "vault", "-vault-addr", "http://v", "-vault-role", "r", "-vault-auth", "approle",
		"-vault-role-id", "id", "-vault-secret-id-file", "f"}, tlsArgs...)
	if err := parse(t, vaultOK...).Validate(); err != nil {
		t.Errorf("complete vault flags: %v", err)
	}
	if err := parse(t).Validate(); err == nil || !strings.Contains(err.Error(), "-tls-cert") {
		t.Errorf("missing TLS files: err = %v", err)
	}
}

package local_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/kmstest"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
)

var (
	td = spiffeid.RequireTrustDomainFromString("cluster.local")
	id = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	// t0 has no sub-second part: certificate times are encoded to the second.
	t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
)

const (
	defaultTTL = 24 * time.Hour
	maxTTL     = 2160 * time.Hour
	rootTTL    = 8760 * time.Hour
)

func config(dir string, clk clock.Clock) local.Config {
	return local.Config{StateDir: dir, TrustDomain: td, DefaultTTL: defaultTTL, MaxTTL: maxTTL, RootTTL: rootTTL, Clock: clk}
}

func newCA(t testing.TB, cfg local.Config) *local.CA {
	t.Helper()
	ca, err := local.New(cfg)
	if err != nil {
		t.Fatalf("local.New: %v", err)
	}
	return ca
}

func TestConformance(t *testing.T) {
	kmstest.Run(t, func(t *testing.T) kms.Backend {
		return newCA(t, config(filepath.Join(t.TempDir(), "kms"), clock.RealClock{}))
	}, td)
}

func TestLeafProfile(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ca := newCA(t, config(t.TempDir(), clk))
	chain := signChain(t, ca, 0)
	if len(chain) != 3 {
		t.Fatalf("chain length %d, want leaf, intermediate, root", len(chain))
	}
	leaf, inter, root := chain[0], chain[1], chain[2]
	if leaf.CheckSignatureFrom(inter) != nil || inter.CheckSignatureFrom(root) != nil || root.CheckSignatureFrom(root) != nil {
		t.Error("chain is not leaf <- intermediate <- self-signed root")
	}
	if !inter.IsCA || !inter.MaxPathLenZero {
		t.Error("intermediate must be a CA limited to signing leaves")
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("key usage = %b, want %b", leaf.KeyUsage, want)
	}
	if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(leaf.ExtKeyUsage, want) {
		t.Errorf("ext key usage = %v, want %v", leaf.ExtKeyUsage, want)
	}
	if !slices.Equal(leaf.Subject.Organization, []string{local.Organization}) || leaf.Subject.CommonName != "" {
		t.Errorf("subject = %q, want O=%s only", leaf.Subject, local.Organization)
	}
	if bits := leaf.SerialNumber.BitLen(); bits > 128 || bits < 64 {
		t.Errorf("serial has %d bits, want up to 128 random bits", bits)
	}
	if !leaf.NotBefore.Equal(t0.Add(-local.ClockSkew)) {
		t.Errorf("NotBefore = %s, want now - %s", leaf.NotBefore, local.ClockSkew)
	}
	if !inter.NotAfter.Equal(root.NotAfter) {
		t.Errorf("intermediate expires at %s, want with the root at %s (it signs until ⅚ of the root's life)", inter.NotAfter, root.NotAfter)
	}
}

func TestTTL(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ca := newCA(t, config(t.TempDir(), clk))
	inter := signChain(t, ca, 0)[1]
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		want time.Time
	}{
		{"zero means default", 0, t0.Add(defaultTTL)},
		{"negative means default", -time.Hour, t0.Add(defaultTTL)},
		{"within bounds", 7 * time.Hour, t0.Add(7 * time.Hour)},
		{"clamped to max", 1000 * 24 * time.Hour, t0.Add(maxTTL)},
	} {
		if got := signChain(t, ca, tc.ttl)[0].NotAfter; !got.Equal(tc.want) {
			t.Errorf("%s: NotAfter = %s, want %s", tc.name, got, tc.want)
		}
	}

	// The process keeps running towards the intermediate's expiry (renewal happens at start).
	clk.SetTime(inter.NotAfter.Add(-10 * 24 * time.Hour))
	if got := signChain(t, ca, maxTTL)[0].NotAfter; !got.Equal(inter.NotAfter) {
		t.Errorf("near intermediate expiry: NotAfter = %s, want the intermediate's %s", got, inter.NotAfter)
	}
	clk.SetTime(inter.NotAfter)
	_, err := ca.Sign(context.Background(), kms.SignRequest{CSR: kmstest.CSR(t, kmstest.CSRDER(t, kmstest.NewKey(t))), ID: id})
	if !errors.Is(err, kms.ErrUnavailable) {
		t.Errorf("expired intermediate: err = %v, want ErrUnavailable", err)
	}
}

func TestRestartKeepsTheCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kms")
	clk := clocktesting.NewFakeClock(t0)
	first := signChain(t, newCA(t, config(dir, clk)), 0)
	before := readState(t, dir)

	clk.SetTime(t0.Add(30 * 24 * time.Hour))
	second := signChain(t, newCA(t, config(dir, clk)), 0)
	if !bytes.Equal(first[2].Raw, second[2].Raw) || !bytes.Equal(first[1].Raw, second[1].Raw) {
		t.Error("restart changed the root or intermediate")
	}
	if after := readState(t, dir); !maps.EqualFunc(before, after, bytes.Equal) {
		t.Error("restart rewrote the state directory")
	}
}

func TestIntermediateRenewedAtStart(t *testing.T) {
	dir := t.TempDir()
	clk := clocktesting.NewFakeClock(t0)
	newCA(t, config(dir, clk))
	writeShortIntermediate(t, dir)
	old := signChain(t, newCA(t, config(dir, clk)), 0)

	// One hour less than a max-ttl leaf still fits: the next start must issue a new intermediate.
	clk.SetTime(old[1].NotAfter.Add(-maxTTL + time.Hour))
	renewed := signChain(t, newCA(t, config(dir, clk)), 0)
	if !bytes.Equal(old[2].Raw, renewed[2].Raw) {
		t.Fatal("renewal changed the root")
	}
	if bytes.Equal(old[1].Raw, renewed[1].Raw) {
		t.Fatal("intermediate was not renewed")
	}
	if renewed[1].CheckSignatureFrom(renewed[2]) != nil || !renewed[1].NotAfter.After(old[1].NotAfter) {
		t.Error("new intermediate is not a longer-lived child of the same root")
	}
	if got := signChain(t, newCA(t, config(dir, clk)), 0); !bytes.Equal(got[1].Raw, renewed[1].Raw) {
		t.Error("renewed intermediate was not persisted")
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kms")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	newCA(t, config(dir, clock.RealClock{}))
	for name, want := range map[string]os.FileMode{
		".":                        0o700,
		local.RootKeyFile:          0o600,
		local.IntermediateKeyFile:  0o600,
		local.RootCertFile:         0o644,
		local.IntermediateCertFile: 0o644,
	} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", name, got, want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Errorf("state directory holds %d entries, want the 4 CA files (temporary files left behind?)", len(entries))
	}
}

func TestBadStateIsRefusedByName(t *testing.T) {
	other := t.TempDir()
	newCA(t, config(other, clock.RealClock{}))
	otherKey, err := os.ReadFile(filepath.Join(other, local.IntermediateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		file   string
		damage func(path string) error
		want   string
	}{
		{"garbage root", local.RootCertFile, write([]byte("not a certificate")), "no PEM CERTIFICATE block"},
		{"truncated key", local.RootKeyFile, truncate, "no PEM PRIVATE KEY block"},
		{"missing intermediate", local.IntermediateCertFile, os.Remove, "state is incomplete"},
		{"key of another CA", local.IntermediateKeyFile, write(otherKey), "does not match"},
		{"readable key", local.IntermediateKeyFile, func(p string) error { return os.Chmod(p, 0o644) }, "chmod it 0600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			newCA(t, config(dir, clock.RealClock{}))
			path := filepath.Join(dir, tc.file)
			if err := tc.damage(path); err != nil {
				t.Fatal(err)
			}
			before := readState(t, dir)
			_, err := local.New(config(dir, clock.RealClock{}))
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %s and saying %q", err, path, tc.want)
			}
			if after := readState(t, dir); !maps.EqualFunc(before, after, bytes.Equal) {
				t.Error("a refused state directory was modified")
			}
		})
	}
}

func TestStateOfAnotherTrustDomainIsRefused(t *testing.T) {
	dir := t.TempDir()
	newCA(t, config(dir, clock.RealClock{}))
	cfg := config(dir, clock.RealClock{})
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("other.example")
	_, err := local.New(cfg)
	if err == nil || !strings.Contains(err.Error(), local.RootCertFile) || !strings.Contains(err.Error(), "cluster.local") {
		t.Fatalf("err = %v, want a trust domain mismatch naming %s", err, local.RootCertFile)
	}
}

func TestExpiredRootIsRefused(t *testing.T) {
	dir := t.TempDir()
	clk := clocktesting.NewFakeClock(t0)
	newCA(t, config(dir, clk))
	clk.SetTime(t0.Add(rootTTL + time.Hour))
	if _, err := local.New(config(dir, clk)); err == nil || !strings.Contains(err.Error(), "root CA expired") {
		t.Fatalf("err = %v, want root CA expired", err)
	}
}

func TestConfigIsValidated(t *testing.T) {
	for name, mutate := range map[string]func(*local.Config){
		"default above max": func(c *local.Config) { c.DefaultTTL = c.MaxTTL + time.Hour },
		"root too short":    func(c *local.Config) { c.RootTTL = 2 * c.MaxTTL },
		"no state dir":      func(c *local.Config) { c.StateDir = "" },
		"no trust domain":   func(c *local.Config) { c.TrustDomain = spiffeid.TrustDomain{} },
	} {
		cfg := config(t.TempDir(), clock.RealClock{})
		mutate(&cfg)
		if _, err := local.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func signChain(t testing.TB, ca *local.CA, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	csr := kmstest.CSR(t, kmstest.CSRDER(t, kmstest.NewKey(t)))
	chain, err := ca.Sign(context.Background(), kms.SignRequest{CSR: csr, ID: id, TTL: ttl})
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return chain
}

func readState(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	state := map[string][]byte{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		state[e.Name()] = data
	}
	return state
}

func write(data []byte) func(string) error {
	return func(path string) error { return os.WriteFile(path, data, 0o600) }
}

func truncate(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data[:len(data)/2], 0o600)
}

package lifecycle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer collects log output written by server goroutines while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records decodes the JSON log lines written so far.
func (b *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func TestNewLoggerLevels(t *testing.T) {
	for _, tc := range []struct {
		level string
		want  []string // messages that get through, of debug/info/warn/error
	}{
		{"debug", []string{"d", "i", "w", "e"}},
		{"info", []string{"i", "w", "e"}},
		{"WARN", []string{"w", "e"}},
		{"error", []string{"e"}},
	} {
		t.Run(tc.level, func(t *testing.T) {
			var buf syncBuffer
			logger, err := NewLogger(&buf, tc.level, "citadel")
			if err != nil {
				t.Fatal(err)
			}
			logger.Debug("d")
			logger.Info("i")
			logger.Warn("w")
			logger.Error("e")
			var got []string
			for _, rec := range buf.records(t) {
				got = append(got, rec["msg"].(string))
				if rec["service"] != "citadel" {
					t.Errorf("record %v lacks service=citadel", rec)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("logged %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNewLoggerBadLevel(t *testing.T) {
	_, err := NewLogger(&bytes.Buffer{}, "loud", "citadel")
	if err == nil || !strings.Contains(err.Error(), "-log-level") || !strings.Contains(err.Error(), "loud") {
		t.Fatalf("NewLogger error = %v, want one naming -log-level and the value", err)
	}
}

type envFlags struct {
	cert    string
	port    int
	verbose bool
	format  string
}

func newEnvFlagSet(f *envFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.StringVar(&f.cert, "tls-cert", "default.pem", "")
	fs.IntVar(&f.port, "port", 1, "")
	fs.BoolVar(&f.verbose, "verbose", false, "")
	fs.StringVar(&f.format, "log.format", "json", "")
	return fs
}

func TestApplyEnv(t *testing.T) {
	t.Setenv("PORTCULLIS_TLS_CERT", "/etc/portcullis/cert.pem")
	t.Setenv("PORTCULLIS_PORT", "9000")
	t.Setenv("PORTCULLIS_VERBOSE", "true")
	t.Setenv("PORTCULLIS_LOG_FORMAT", "text")

	var f envFlags
	fs := newEnvFlagSet(&f)
	if err := fs.Parse([]string{"-port=8443"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatalf("applyEnv: %v", err)
	}
	want := envFlags{cert: "/etc/portcullis/cert.pem", port: 8443, verbose: true, format: "text"}
	if f != want {
		t.Fatalf("flags = %+v, want %+v (the command line wins over the environment)", f, want)
	}
}

func TestApplyEnvLeavesDefaultsWithoutEnv(t *testing.T) {
	var f envFlags
	fs := newEnvFlagSet(&f)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if want := (envFlags{cert: "default.pem", port: 1, format: "json"}); f != want {
		t.Fatalf("flags = %+v, want defaults %+v", f, want)
	}
}

func TestApplyEnvBadValue(t *testing.T) {
	t.Setenv("PORTCULLIS_PORT", "eighty")
	var f envFlags
	fs := newEnvFlagSet(&f)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	err := applyEnv(fs)
	if err == nil || !strings.Contains(err.Error(), "PORTCULLIS_PORT") {
		t.Fatalf("applyEnv error = %v, want one naming PORTCULLIS_PORT", err)
	}

	// A bad value the command line overrides is never looked at.
	fs = newEnvFlagSet(&f)
	if err := fs.Parse([]string{"-port=80"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatalf("applyEnv with the flag on the command line: %v", err)
	}
}

type testConfig struct {
	name  string
	valid bool
}

func (c *testConfig) RegisterFlags(fs *flag.FlagSet) { fs.StringVar(&c.name, "name", "", "") }

func (c *testConfig) Validate() error {
	if !c.valid || c.name == "" {
		return errors.New("-name is required")
	}
	return nil
}

type runFunc func(ctx context.Context) error

func (f runFunc) Run(ctx context.Context) error { return f(ctx) }

func TestMainExitCodes(t *testing.T) {
	runs := func(err error) func(*slog.Logger) (Runnable, error) {
		return func(*slog.Logger) (Runnable, error) {
			return runFunc(func(context.Context) error { return err }), nil
		}
	}
	for name, tc := range map[string]struct {
		args  []string
		env   string
		valid bool
		build func(*slog.Logger) (Runnable, error)
		want  int
	}{
		"clean stop":         {args: []string{"-name=x"}, valid: true, build: runs(nil), want: 0},
		"canceled":           {args: []string{"-name=x"}, valid: true, build: runs(context.Canceled), want: 0},
		"run fails":          {args: []string{"-name=x"}, valid: true, build: runs(errors.New("boom")), want: 1},
		"name from env":      {env: "x", valid: true, build: runs(nil), want: 0},
		"unknown flag":       {args: []string{"-nope"}, valid: true, build: runs(nil), want: 2},
		"invalid config":     {args: []string{"-name=x"}, valid: false, build: runs(nil), want: 2},
		"bad log level":      {args: []string{"-name=x", "-log-level=loud"}, valid: true, build: runs(nil), want: 2},
		"missing from flags": {valid: true, build: runs(nil), want: 2},
		"build fails": {args: []string{"-name=x"}, valid: true, want: 1,
			build: func(*slog.Logger) (Runnable, error) { return nil, errors.New("no backend") }},
	} {
		t.Run(name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("PORTCULLIS_NAME", tc.env)
			}
			if got := Main("test", tc.args, &testConfig{valid: tc.valid}, tc.build); got != tc.want {
				t.Fatalf("Main = %d, want %d", got, tc.want)
			}
		})
	}
}

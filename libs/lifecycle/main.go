package lifecycle

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Runnable is a service assembled from its config.
type Runnable interface {
	Run(ctx context.Context) error
}

// Config is what every service config offers to Main.
type Config interface {
	RegisterFlags(fs *flag.FlagSet)
	Validate() error
}

// Main is the whole body of a service's main: parse flags (each flag may also come from the
// environment as PORTCULLIS_<FLAG_NAME>), validate, build, run until SIGINT/SIGTERM. It returns
// the process exit code: 0 on a clean stop, 1 on a failure, 2 on bad configuration.
func Main(name string, args []string, cfg Config, build func(*slog.Logger) (Runnable, error)) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := applyEnv(fs); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 2
	}
	logger, err := NewLogger(os.Stderr, *logLevel, name)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: invalid configuration: %v\n", name, err)
		return 2
	}
	logger.Info("starting", "version", Version)
	svc, err := build(logger)
	if err != nil {
		logger.Error("startup failed", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := svc.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("stopped on error", "err", err)
		return 1
	}
	logger.Info("stopped")
	return 0
}

// applyEnv sets every flag not given on the command line from PORTCULLIS_<NAME>, if present.
func applyEnv(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "PORTCULLIS_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(f.Name))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", env, e)
			}
		}
	})
	return err
}

// NewLogger builds the JSON logger every Portcullis binary uses.
func NewLogger(w io.Writer, level, service string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})).With("service", service), nil
}

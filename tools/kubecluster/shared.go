package kubecluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartTimeout bounds Shared's start of the cluster (the binaries are built beforehand).
const StartTimeout = 5 * time.Minute

// SharedLockWait is Shared's Options.LockWait when Main's is 0: another package's tests may be
// using the machine's one cluster.
const SharedLockWait = 15 * time.Minute

var shared struct {
	once sync.Once
	main bool // Main was called: it stops the cluster
	opts Options
	c    *Cluster
	err  error
}

// Main runs a test package's tests with one cluster shared by all of them; call it from TestMain.
// The cluster starts at the first Shared call (a run that selects no cluster test starts none)
// and stops after the last test. If a test failed, the components' logs are copied to a new
// temporary directory, named on stderr. Main does not return.
func Main(m *testing.M, opts Options) {
	shared.opts, shared.main = opts, true
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs // Ctrl-C: leave the host clean, then die
		stopShared(true)
		os.Exit(2)
	}()
	code := m.Run()
	if stopShared(code != 0) != nil && code == 0 {
		code = 1
	}
	os.Exit(code)
}

// Shared is the package's cluster that Main runs, started on first use. It fails tb (never
// skips) if the cluster cannot start.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	if !shared.main {
		tb.Fatal("kubecluster.Shared: call kubecluster.Main from the package's TestMain, which stops the cluster")
	}
	shared.once.Do(func() {
		if shared.opts.Logger == nil {
			shared.opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
		}
		if shared.opts.LockWait == 0 {
			shared.opts.LockWait = SharedLockWait
		}
		ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
		defer cancel()
		shared.c, shared.err = Start(ctx, shared.opts)
	})
	if shared.err != nil {
		tb.Fatalf("starting the shared cluster: %v", shared.err)
	}
	return shared.c
}

var stopMu sync.Mutex

func stopShared(saveLogs bool) error {
	stopMu.Lock()
	defer stopMu.Unlock()
	c := shared.c
	if c == nil {
		return nil
	}
	if saveLogs {
		if dir, err := os.MkdirTemp("", "kubecluster-logs-"); err == nil && c.SaveLogs(dir) == nil {
			fmt.Fprintf(os.Stderr, "kubecluster: the cluster's logs are in %s\n", dir)
		}
	}
	err := c.Stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubecluster: stopping the cluster: %v\n", err)
	}
	return err
}

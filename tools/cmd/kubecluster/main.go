// Command kubecluster runs the one-node test cluster of tools/kubecluster by hand:
//
//	kubecluster up [-dir DIR] [-image ARCHIVE]...   start it, print KUBECONFIG, run until SIGINT/SIGTERM
//	kubecluster down                                stop the running one; clean up after a dead one
//
// `go tool task cluster:up` and `go tool task cluster:down` run it with -dir .cache/cluster.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/kubecluster"
)

type imageList []string

func (l *imageList) String() string     { return strings.Join(*l, ",") }
func (l *imageList) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kubecluster:", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: kubecluster up [-dir DIR] [-image ARCHIVE]... | kubecluster down")
	}
	switch args[0] {
	case "up":
		fs := flag.NewFlagSet("up", flag.ContinueOnError)
		dir := fs.String("dir", ".cache/cluster", "the cluster's directory (emptied at start, kept at stop: logs)")
		var images imageList
		fs.Var(&images, "image", "an OCI image archive to import (repeatable)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return up(log, kubecluster.Options{Dir: *dir, Images: images, Logger: log})
	case "down":
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		return kubecluster.Down(ctx, log)
	}
	return fmt.Errorf("unknown command %q: want up or down", args[0])
}

func up(log *slog.Logger, opts kubecluster.Options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, kubecluster.StartTimeout)
	defer cancel()
	c, err := kubecluster.Start(startCtx, opts)
	if err != nil {
		return err
	}
	fmt.Printf("cluster ready; stop with Ctrl-C or `go tool task cluster:down`\nexport KUBECONFIG=%s\n", c.Kubeconfig())
	<-ctx.Done()
	log.Info("stopping the cluster")
	return c.Stop()
}

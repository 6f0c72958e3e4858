// Command sdsload measures a node agent under SDS load on a stack of real processes (see package
// sdsload). Scenario "rotation" holds -pods x -streams-per-pod StreamsSecrets streams open on one
// agent, reports their memory cost, then changes the trust bundle -rotations times and reports
// how long each stream took to get the new ROOTCA. Scenario "burst" starts -pods pods with
// distinct identities asking at once and reports how long serving them took and how many
// certificates kms-adapter signed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/tools/sdsload"
)

func main() {
	bin := flag.String("bin", ".cache/bin", "directory of the built service binaries (go tool task build)")
	dir := flag.String("dir", "", "state directory (default: a new temporary directory, removed at the end)")
	scenario := flag.String("scenario", "rotation", "rotation or burst")
	pods := flag.Int("pods", 100, "pods on the node")
	perPod := flag.Int("streams-per-pod", 100, "rotation: SDS streams per pod")
	perConn := flag.Int("streams-per-conn", 100, "rotation: SDS streams per gRPC connection")
	opening := flag.Int("opening", 200, "rotation: streams waiting for their first response at once while opening")
	rotations := flag.Int("rotations", 3, "rotation: trust-bundle changes to measure")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Heap figures are taken after a forced GC, which the agent offers through pprof.
	os.Setenv(lifecycle.ProfilingEnv, "1")
	if err := run(ctx, *bin, *dir, *scenario, *pods, *perPod, *perConn, *opening, *rotations); err != nil {
		fmt.Fprintln(os.Stderr, "sdsload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin, dir, scenario string, pods, perPod, perConn, opening, rotations int) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "sdsload-") // short: Unix socket paths are limited to 108 bytes
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	switch scenario {
	case "rotation":
		s, ps, err := sdsload.StartStack(ctx, bin, dir, pods, pods, sdsload.RotationExtra)
		if err != nil {
			return err
		}
		defer s.Stop()
		l, err := sdsload.StartLoad(ctx, sdsload.LoadConfig{Stack: s, Node: sdsload.Node, Pods: ps,
			Fleet: sdsload.FleetConfig{StreamsPerSidecar: perPod, StreamsPerConn: perConn, Opening: opening}})
		if err != nil {
			return err
		}
		defer l.Close()
		fmt.Printf("opened %d streams in %s (first response %s)\n%s\n", l.Fleet.Len(), l.Open.Round(time.Millisecond), l.FirstResponse, l.Memory)
		for i := range rotations {
			if i > 0 {
				if err := l.Settle(ctx); err != nil {
					return err
				}
			}
			d, err := l.RotateBundle(ctx)
			if err != nil {
				return err
			}
			fmt.Printf("bundle change %d: RotateCA PREPARE -> new ROOTCA on every stream: %s\n", i+1, sdsload.Summarize(d))
		}
		return nil
	case "burst":
		s, ps, err := sdsload.StartStack(ctx, bin, dir, pods, pods, nil)
		if err != nil {
			return err
		}
		defer s.Stop()
		r, err := sdsload.Burst(ctx, s, sdsload.Node, ps)
		if err != nil {
			return err
		}
		fmt.Println(r)
		return nil
	}
	return fmt.Errorf("unknown -scenario %q (rotation or burst)", scenario)
}

// Command devstack runs the whole Portcullis suite on its embedded defaults (local CA, a
// directory of manifests instead of Kubernetes) as real processes, then shows it working: two
// example workloads on two nodes get their certificates over SDS and complete an mTLS handshake.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

func main() {
	bin := flag.String("bin", ".cache/bin", "directory of the built service binaries")
	manifests := flag.String("manifests", "examples/cluster", "manifests directory served by mcp-sync")
	dir := flag.String("dir", ".cache/devstack", "state directory (certificates, CA, sockets, logs)")
	client := flag.String("client", "shop/frontend-0", "pod that dials")
	server := flag.String("server", "payments/ledger-0", "pod that listens")
	once := flag.Bool("once", false, "stop after the demo instead of running until Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *manifests, *dir, *client, *server, *once); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin, manifests, dir, clientKey, serverKey string, once bool) error {
	pods, err := stack.LoadPods(manifests)
	if err != nil {
		return err
	}
	var nodes []string
	for _, p := range pods {
		if p.Node != "" && !slices.Contains(nodes, p.Node) {
			nodes = append(nodes, p.Node)
		}
	}
	slices.Sort(nodes)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	fmt.Printf("starting kms-adapter, mcp-sync, citadel and node agents for %v (logs in %s/logs)\n", nodes, dir)
	s, err := stack.Start(ctx, stack.Options{BinDir: bin, Dir: dir, Manifests: manifests, Nodes: nodes})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("stopping")
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "devstack:", err)
		}
	}()
	fmt.Print(s.Describe())

	var svids []*stack.SVID
	for _, key := range []string{clientKey, serverKey} {
		pod, err := stack.FindPod(pods, key)
		if err != nil {
			return err
		}
		token, err := s.Token(pod, time.Hour)
		if err != nil {
			return err
		}
		svid, err := stack.FetchSVID(ctx, s.Socket(pod.Node), sdsclient.Credential{Token: token}, "sidecar~"+pod.Key())
		if err != nil {
			return fmt.Errorf("sds for %s: %w", key, err)
		}
		fmt.Printf("\n%s on %s got over SDS (%s):\n  spiffe id  %s\n  serial     %s\n  expires    %s\n  roots      %d\n",
			key, pod.Node, s.Socket(pod.Node), svid.ID, svid.Leaf().SerialNumber.Text(16),
			svid.Leaf().NotAfter.UTC().Format(time.RFC3339), len(svid.Roots))
		svids = append(svids, svid)
	}
	conn, err := stack.Handshake(ctx, svids[0], svids[1])
	if err != nil {
		return err
	}
	fmt.Printf("\nmTLS handshake OK: %s -> %s (%s)\n", svids[0].ID, svids[1].ID, conn)
	if once {
		return nil
	}
	fmt.Println("\nthe stack is running; press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

// Command devstack runs the whole Portcullis suite on its embedded defaults (local CA, a
// directory of manifests instead of Kubernetes) as real processes, then shows it working: two
// example workloads on two nodes get their certificates over SDS and complete an mTLS handshake.
package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
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

	var sidecars []*stack.Sidecar
	for _, key := range []string{clientKey, serverKey} {
		pod, err := stack.FindPod(pods, key)
		if err != nil {
			return err
		}
		token, err := s.Token(pod, time.Hour)
		if err != nil {
			return err
		}
		// Held open like Envoy's: the rotation below is pushed on these streams.
		sc, err := stack.OpenSidecar(ctx, s.Socket(pod.Node), sdsclient.Credential{Token: token}, "sidecar~"+pod.Key())
		if err != nil {
			return fmt.Errorf("sds for %s: %w", key, err)
		}
		defer sc.Close()
		svid := sc.Current()
		fmt.Printf("\n%s on %s got over SDS (%s):\n  spiffe id  %s\n  serial     %s\n  expires    %s\n  roots      %d\n",
			key, pod.Node, s.Socket(pod.Node), svid.ID, svid.Leaf().SerialNumber.Text(16),
			svid.Leaf().NotAfter.UTC().Format(time.RFC3339), len(svid.Roots))
		sidecars = append(sidecars, sc)
	}
	conn, err := stack.Handshake(ctx, sidecars[0].Current(), sidecars[1].Current())
	if err != nil {
		return err
	}
	fmt.Printf("\nmTLS handshake OK: %s -> %s (%s)\n", sidecars[0].Current().ID, sidecars[1].Current().ID, conn)
	if err := rotateRoot(ctx, s, sidecars); err != nil {
		return err
	}
	files, err := s.AdminFiles()
	if err != nil {
		return err
	}
	fmt.Printf("\noperator CLI: %s/portcullisctl -kms-addr %s -tls-cert %s -tls-key %s -tls-ca %s status\n",
		bin, s.Addr(stack.KMSAdapter), files.CertFile, files.KeyFile, files.CAFile)
	if once {
		return nil
	}
	fmt.Println("\nthe stack is running; press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

// rotateRoot prepares and activates a new root through the admin API and shows the open SDS
// streams receiving it (NATS event → agent → push), then handshakes again.
func rotateRoot(ctx context.Context, s *stack.Stack, sidecars []*stack.Sidecar) error {
	admin, conn, err := s.Admin()
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Println("\nrotating the root CA (prepare, then activate) while the SDS streams stay open")
	start := time.Now()
	st, err := admin.RotateCA(ctx, &kmsv1.RotateCARequest{Step: kmsv1.RotationStep_ROTATION_STEP_PREPARE})
	if err != nil {
		return err
	}
	newRoot, err := x509.ParseCertificate(st.GetNext().GetRoot())
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, sc := range sidecars {
		if _, err := sc.WaitFor(wctx, func(v *stack.SVID) bool { return v.Trusts(newRoot) }); err != nil {
			return err
		}
	}
	fmt.Printf("  new root pushed to both workloads' ROOTCA after %s (bundle version %d)\n", time.Since(start).Round(time.Millisecond), st.GetBundleVersion())
	start = time.Now()
	if _, err := admin.RotateCA(ctx, &kmsv1.RotateCARequest{Step: kmsv1.RotationStep_ROTATION_STEP_ACTIVATE}); err != nil {
		return err
	}
	for _, sc := range sidecars {
		v, err := sc.WaitFor(wctx, func(v *stack.SVID) bool { return v.ChainsTo(newRoot) })
		if err != nil {
			return err
		}
		fmt.Printf("  %s re-issued under the new root: serial %s\n", v.ID, v.Leaf().SerialNumber.Text(16))
	}
	fmt.Printf("  both moved after %s (re-issues spread over the agents' -rotate-jitter)\n", time.Since(start).Round(time.Millisecond))
	conn2, err := stack.Handshake(ctx, sidecars[0].Current(), sidecars[1].Current())
	if err != nil {
		return err
	}
	fmt.Printf("mTLS handshake OK after the rotation (%s)\n", conn2)
	return nil
}

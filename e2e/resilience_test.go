package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// With citadel down, sidecars still get the certificates their agent holds, a new identity waits
// (its stream stays open, it is not refused), and everything recovers when citadel is back.
func TestCitadelOutageServesCachedCertificates(t *testing.T) {
	s, _ := startStack(t)
	frontend, cart := pod(t, "shop/frontend-0"), pod(t, "shop/cart-0") // both on node-a
	before, err := fetch(t, s, frontend.Node, frontend)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Process(stack.Citadel).Stop(); err != nil {
		t.Fatal(err)
	}
	again, err := fetch(t, s, frontend.Node, frontend)
	if err != nil {
		t.Fatalf("cached certificate not served while citadel is down: %v", err)
	}
	if again.Leaf().SerialNumber.Cmp(before.Leaf().SerialNumber) != 0 {
		t.Fatal("agent served a different certificate while citadel was down")
	}

	token, err := s.Token(cart, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err = stack.FetchSVID(ctx, s.Socket(cart.Node), sdsclient.Credential{Token: token}, "sidecar~"+cart.Key())
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a new identity during the outage got %v; want its request held open (deadline exceeded)", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Resume(ctx, stack.Citadel); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 1)
	go func() {
		svid, err := stack.FetchSVID(ctx, s.Socket(cart.Node), sdsclient.Credential{Token: token}, "sidecar~"+cart.Key())
		if err == nil {
			_, err = stack.Handshake(ctx, svid, before)
		}
		waiting <- err
	}()
	if err := <-waiting; err != nil {
		t.Fatalf("after citadel came back: %v", err)
	}
}

// A broken manifest is reported and changes nothing; the pods of good files keep being served.
func TestBrokenManifestKeepsLastGoodState(t *testing.T) {
	s, manifests := startStack(t)
	ledger := pod(t, "payments/ledger-0")
	if _, err := fetch(t, s, ledger.Node, ledger); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(manifests, "payments.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: v1\nkind: Pod\nmetadata: [this is not\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Wait until mcp-sync has seen the broken file, then check nothing was lost.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(s.Dir(), "logs", stack.MCPSync+".log"))
		if reportsBroken(string(b), "payments.yaml") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mcp-sync did not report the broken manifest by name within 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := fetch(t, s, ledger.Node, ledger); err != nil {
		t.Fatalf("a pod of the broken file's last good version was dropped: %v", err)
	}
}

// reportsBroken finds mcp-sync's error line for a broken manifest file.
func reportsBroken(log, file string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `"level":"ERROR"`) && strings.Contains(line, "broken manifest file") && strings.Contains(line, file) {
			return true
		}
	}
	return false
}

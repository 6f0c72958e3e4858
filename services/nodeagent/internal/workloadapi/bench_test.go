package workloadapi_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The agent's side of a JWT-SVID cache hit: go-spiffe's client on a per-pod socket, the token
// already cached.
func BenchmarkFetchJWTSVIDCacheHit(b *testing.B) {
	h := newHarness(b, options{})
	c := h.client(b, cart)
	ctx := testCtx(b)
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders"}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fetches/s")
	if n := h.citadel.mintCount(); n != 1 {
		b.Fatalf("citadel minted %d tokens, want 1", n)
	}
}

// ValidateJWTSVID over the socket (go-spiffe's client also parses the token, unverified).
func BenchmarkValidateJWTSVID(b *testing.B) {
	h := newHarness(b, options{})
	ctx := testCtx(b)
	svid, err := h.client(b, cart).FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web"})
	if err != nil {
		b.Fatal(err)
	}
	c := h.client(b, web)
	tok := svid.Marshal()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.ValidateJWTSVID(ctx, tok, "web"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "validations/s")
}

// The ceiling for the two above, in the same run: ES256 signing and go-spiffe's validation
// (parse, ES256 verify, claims) in process, with no socket.
func BenchmarkES256Ceiling(b *testing.B) {
	key := genKeyNoTB()
	b.Run("sign", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := signJWT(key, "k", cartID.String(), []string{"web"}, time.Now(), jwtTTL); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
	})
	b.Run("validate", func(b *testing.B) {
		h := newHarness(b, options{})
		svid, err := h.client(b, cart).FetchJWTSVID(testCtx(b), jwtsvid.Params{Audience: "web"})
		if err != nil {
			b.Fatal(err)
		}
		tok := svid.Marshal()
		b.ResetTimer()
		for b.Loop() {
			if _, err := jwtsvid.ParseAndValidate(tok, h.bundles, []string{"web"}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "validations/s")
	})
}

// watchClientEnv names the socket a child process of BenchmarkMemoryPerX509Watch opens its
// watches on; the child is this test binary running TestX509WatchClientProcess.
const watchClientEnv = "WORKLOADAPI_BENCH_WATCH_SOCKET"

// Memory per open FetchX509SVID watch at the agent. The watches are opened by a child process
// so that only the server's side is counted (the SDS figure of docs/benchmarks.md is the
// agent's alone too): the agent's heap and goroutine stacks in use, after a GC, before and after.
func BenchmarkMemoryPerX509Watch(b *testing.B) {
	streams := 2000
	if testing.Short() {
		streams = 200
	}
	for b.Loop() {
		h := newHarness(b, options{})
		// Warm: the identity's certificate exists before the measure.
		if _, err := h.client(b, cart).FetchX509SVID(testCtx(b)); err != nil {
			b.Fatal(err)
		}
		before := inUse()
		cmd := exec.Command(os.Args[0], "-test.run=^TestX509WatchClientProcess$")
		cmd.Env = append(os.Environ(), watchClientEnv+"="+h.podSocket[cart.PodUID], "WATCHES="+strconv.Itoa(streams))
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "ready\n" {
			b.Fatalf("watch client: %q %v", line, err)
		}
		after := inUse()
		b.ReportMetric(float64(after-before)/float64(streams)/1024, "KiB/watch")
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

func inUse() uint64 {
	var m runtime.MemStats
	for range 2 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// TestX509WatchClientProcess is BenchmarkMemoryPerX509Watch's child: it opens WATCHES
// FetchX509SVID streams over 10 connections, says "ready" once each has its first response,
// and holds them until its stdin closes. Run on its own it does nothing.
func TestX509WatchClientProcess(t *testing.T) {
	sock := os.Getenv(watchClientEnv)
	if sock == "" {
		return
	}
	n, _ := strconv.Atoi(os.Getenv("WATCHES"))
	ctx := withHeader(context.Background())
	var conns []*grpc.ClientConn
	for range 10 {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	for i := range n {
		s, err := workloadpb.NewSpiffeWorkloadAPIClient(conns[i%len(conns)]).FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

package peercred

import (
	"net"
	"slices"
	"testing"
	"time"
)

// latencies collects per-op durations and reports their p50 and p99 next to ns/op.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	at := func(q float64) float64 { return float64(l[int(q*float64(len(l)-1))].Nanoseconds()) }
	b.ReportMetric(at(0.50), "p50-ns")
	b.ReportMetric(at(0.99), "p99-ns")
}

// BenchmarkHandshake measures the server side of a new connection from a process in a pod
// cgroup (a helper process that connects on cue, outside the timer): a bare accept (the
// ceiling) against accept plus the peercred handshake (SO_PEERCRED, SO_PEERPIDFD, start time,
// and the resolution of pid to pod that the handshake includes).
func BenchmarkHandshake(b *testing.B) {
	cg := newTestCgroups(b)
	dir := cg.pod(b, "pids", "burstable", newPodUID(), newContainerID())
	r := &Resolver{CgroupRoot: cg.root}
	for _, bc := range []struct {
		name      string
		handshake bool
	}{{"bare-accept", false}, {"peercred", true}} {
		b.Run(bc.name, func(b *testing.B) {
			path := socketPath(b)
			lis, err := net.Listen("unix", path)
			if err != nil {
				b.Fatal(err)
			}
			defer lis.Close()
			c := startChild(b, "dial-each-line", "PEERCRED_SOCKET="+path)
			move(b, dir, c.pid())
			creds := TransportCredentials(r)
			lat := make(latencies, 0, b.N)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				c.stdin.Write([]byte("\n"))
				c.expect(b, "ok") // connected: the connection waits in the backlog
				b.StartTimer()
				start := time.Now()
				conn, err := lis.Accept()
				if err != nil {
					b.Fatal(err)
				}
				if bc.handshake {
					_, info, err := creds.ServerHandshake(conn)
					if err != nil || info.(AuthInfo).Err != nil {
						b.Fatalf("handshake: %v %+v", err, info)
					}
				}
				lat = append(lat, time.Since(start))
				b.StopTimer()
				conn.Close()
				b.StartTimer()
			}
			b.StopTimer()
			lat.report(b)
			c.stop(b)
		})
	}
}

// BenchmarkResolve measures Resolve of a process in a pod cgroup: cold (a process never
// resolved before, its cgroup file read for the first time; the process is started outside
// the timer, so use -benchtime Nx) and warm (the same process again and again).
func BenchmarkResolve(b *testing.B) {
	cg := newTestCgroups(b)
	pod := newPodUID()
	dir := cg.pod(b, "pids", "besteffort", pod, newContainerID())
	r := &Resolver{CgroupRoot: cg.root}
	resolve := func(b *testing.B, creds Creds, lat *latencies) {
		start := time.Now()
		p, err := r.Resolve(creds)
		*lat = append(*lat, time.Since(start))
		if err != nil || p.PodUID != pod {
			b.Fatalf("Resolve: %+v, %v", p, err)
		}
	}
	b.Run("cold", func(b *testing.B) {
		lat := make(latencies, 0, b.N)
		for range b.N {
			b.StopTimer()
			c := startChild(b, "sleep")
			move(b, dir, c.pid())
			creds := credsOf(b, c)
			b.StartTimer()
			resolve(b, creds, &lat)
			b.StopTimer()
			c.stop(b)
			b.StartTimer()
		}
		b.StopTimer()
		lat.report(b)
	})
	b.Run("warm", func(b *testing.B) {
		c := startChild(b, "sleep")
		move(b, dir, c.pid())
		creds := credsOf(b, c)
		resolve(b, creds, &latencies{})
		lat := make(latencies, 0, b.N)
		b.ResetTimer()
		for range b.N {
			resolve(b, creds, &lat)
		}
		b.StopTimer()
		lat.report(b)
		c.stop(b)
	})
}

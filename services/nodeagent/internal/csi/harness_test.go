package csi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		// Publishing bind-mounts: these tests need root, like the kubelet's CSI plugins.
		fmt.Fprintln(os.Stderr, "package csi: the tests bind-mount directories; run them as root")
		os.Exit(1)
	}
	goleak.VerifyTestMain(m)
}

const (
	testNode     = "node-a"
	testAudience = "portcullis"
	testToken    = "header.payload.signature"
)

// testPublisher listens on each pod socket and answers every connection with the pod's
// namespace/name, so a test can tell which pod's socket it reached.
type testPublisher struct {
	mu     sync.Mutex
	lis    map[string]net.Listener
	opened []PodInfo
	closed []string
	wg     sync.WaitGroup
}

func newTestPublisher() *testPublisher { return &testPublisher{lis: map[string]net.Listener{}} }

func (p *testPublisher) OpenPodSocket(pod PodInfo, path string) error {
	lis, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		lis.Close()
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lis[pod.UID] = lis
	p.opened = append(p.opened, pod)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(conn, "%s/%s\n", pod.Namespace, pod.Name)
			conn.Close()
		}
	}()
	return nil
}

func (p *testPublisher) ClosePodSocket(uid string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = append(p.closed, uid)
	if lis, ok := p.lis[uid]; ok {
		delete(p.lis, uid)
		return lis.Close()
	}
	return nil
}

// kill closes every socket without telling the driver, as the agent's death does; Go's
// listener removes the socket file on close, so the file is put back as a dead one would be.
func (p *testPublisher) kill(t *testing.T) {
	p.mu.Lock()
	for uid, lis := range p.lis {
		path := lis.Addr().String()
		lis.(*net.UnixListener).SetUnlinkOnClose(false)
		lis.Close()
		delete(p.lis, uid)
		if _, err := os.Stat(path); err != nil {
			t.Errorf("socket %s gone after the agent died: %v", path, err)
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *testPublisher) snapshot() (opened []PodInfo, closed []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]PodInfo(nil), p.opened...), append([]string(nil), p.closed...)
}

// harness runs a Driver on sockets under dir.
type harness struct {
	dir      string
	driver   *Driver
	pub      *testPublisher
	node     csipb.NodeClient
	identity csipb.IdentityClient
	reg      registerapi.RegistrationClient
	stop     func()
}

// shortTempDir is a temp dir with a short path: a Unix socket path holds 107 bytes, and
// t.TempDir's are long.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A failed test may leave a volume mounted; never remove through a mount.
		for _, m := range mountsUnder(t, dir) {
			_ = unmountAll(m)
		}
		os.RemoveAll(dir)
	})
	return dir
}

func startDriver(t *testing.T, dir string) *harness {
	t.Helper()
	h := &harness{dir: dir, pub: newTestPublisher()}
	d, err := New(Config{
		NodeName: testNode, Endpoint: filepath.Join(dir, "plugins", DefaultDriverName, "csi.sock"),
		RegistrationDir: filepath.Join(dir, "plugins_registry"), StateDir: filepath.Join(dir, "state"),
		TokenAudience: testAudience, Publisher: h.pub, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	h.driver = d
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	csiConn := dialUnix(t, d.cfg.Endpoint)
	regConn := dialUnix(t, d.RegistrationSocket())
	h.node, h.identity = csipb.NewNodeClient(csiConn), csipb.NewIdentityClient(csiConn)
	h.reg = registerapi.NewRegistrationClient(regConn)
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			csiConn.Close()
			regConn.Close()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		h.stop()
		h.pub.kill(t)
	})
	return h
}

func dialUnix(t *testing.T, path string) *grpc.ClientConn {
	t.Helper()
	// Run listens in its goroutine: the first dial may come before the socket exists, and the
	// default backoff would wait a second before the next.
	backoffCfg := backoff.DefaultConfig
	backoffCfg.BaseDelay = 10 * time.Millisecond
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)), grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffCfg}))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func rpcContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// targetPath is where the kubelet would ask for the pod's volume (shortened: see shortTempDir).
func (h *harness) targetPath(uid string) string {
	return filepath.Join(h.dir, "kubelet", uid[:8], "mount")
}

func publishRequest(uid, target string) *csipb.NodePublishVolumeRequest {
	return &csipb.NodePublishVolumeRequest{
		VolumeId:   "csi-" + uid,
		TargetPath: target,
		Readonly:   true,
		VolumeCapability: &csipb.VolumeCapability{
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: map[string]string{
			attrEphemeral:      "true",
			attrPodName:        "web-" + uid[:4],
			attrPodNamespace:   "shop",
			attrPodUID:         uid,
			attrServiceAccount: "web",
			attrTokens: `{"` + testAudience + `":{"token":"` + testToken + `","expirationTimestamp":"2026-11-30T01:00:00Z"},` +
				`"other":{"token":"not-ours","expirationTimestamp":"2026-11-30T01:00:00Z"}}`,
		},
	}
}

// callSocket connects to a pod socket and returns what the test publisher answered.
func callSocket(path string) (string, error) {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading from %s: %w", path, err)
	}
	return line[:len(line)-1], nil
}

// mountsUnder lists the mount points at or under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if p := unescapeMountinfo(f[4]); p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want it gone, Lstat says %v", path, err)
	}
}

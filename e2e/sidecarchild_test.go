package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// A sidecar child is this test binary started again as a process of its own, so that the node
// agent sees a real, separate peer (its pid, its cgroup) that a test can move between pod
// cgroups. It sends no token: the agent must tell who it is from the kernel alone. It reads one
// command per line on stdin and answers one JSON line on stdout:
//
//	fetch            a new connection and stream asks for default and ROOTCA: {id, serial, key} or {error, code}
//	open N silent    N streams, 100 to a connection, that follow pushes and reopen when they
//	                 break, asking again like Envoy or (silent) not, like MOSN
//	mark             starts a new epoch: {epoch}
//	status           {streams, fresh (streams that received in this epoch), ids, keys, serials, errors}
const sidecarChildEnv = "PORTCULLIS_E2E_SIDECAR_SOCKET"

type childAnswer struct {
	ID      string   `json:"id,omitempty"`
	Serial  string   `json:"serial,omitempty"`
	Key     string   `json:"key,omitempty"`
	Error   string   `json:"error,omitempty"`
	Code    string   `json:"code,omitempty"`
	Epoch   int      `json:"epoch,omitempty"`
	Streams int      `json:"streams,omitempty"`
	Fresh   int      `json:"fresh,omitempty"`
	IDs     []string `json:"ids,omitempty"`
	Keys    []string `json:"keys,omitempty"`
	Serials []string `json:"serials,omitempty"`
	Errors  []string `json:"errors,omitempty"`
}

// runSidecarChild is the child's main.
func runSidecarChild(socket string) int {
	c := &childStreams{socket: socket}
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		var a childAnswer
		switch {
		case len(f) == 1 && f[0] == "fetch":
			a = fetchOnce(socket)
		case len(f) >= 2 && f[0] == "open":
			n, _ := strconv.Atoi(f[1])
			c.open(n, len(f) > 2 && f[2] == "silent")
			a.Streams = n
		case len(f) == 1 && f[0] == "mark":
			a.Epoch = c.mark()
		case len(f) == 1 && f[0] == "status":
			a = c.status()
		default:
			a.Error = fmt.Sprintf("unknown command %q", in.Text())
		}
		if err := out.Encode(a); err != nil {
			return 1
		}
	}
	return 0
}

func fetchOnce(socket string) childAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := sdsclient.Dial(socket)
	if err != nil {
		return childAnswer{Error: err.Error()}
	}
	defer c.Close()
	st, err := c.Open(ctx, "sidecar-child", sdsclient.Credential{})
	if err == nil {
		err = st.Request(true, "default", "ROOTCA")
	}
	var secrets map[string]*tlsv3.Secret
	if err == nil {
		secrets, err = st.Recv()
	}
	if err != nil {
		return childAnswer{Error: status.Convert(err).Message(), Code: status.Code(err).String()}
	}
	return describe(secrets)
}

func describe(secrets map[string]*tlsv3.Secret) childAnswer {
	svid, err := stack.SVIDFromSecrets(secrets)
	if err != nil {
		return childAnswer{Error: err.Error()}
	}
	return childAnswer{ID: svid.ID.String(), Serial: svid.Cert.Leaf.SerialNumber.Text(16), Key: keyOf(svid.Cert.Leaf)}
}

func keyOf(leaf *x509.Certificate) string {
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:8])
}

// childStreams are the child's long-lived streams.
type childStreams struct {
	socket string
	mu     sync.Mutex
	epoch  int
	last   []childAnswer // per stream: what it received last
	at     []int         // per stream: the epoch it received that in
	errs   map[string]bool
}

// streamsPerConn is how many of the child's streams share one connection (Envoy multiplexes its
// SDS streams on one gRPC connection too).
const streamsPerConn = 100

func (c *childStreams) open(n int, silent bool) {
	c.mu.Lock()
	base := len(c.last)
	c.last = append(c.last, make([]childAnswer, n)...)
	c.at = append(c.at, make([]int, n)...)
	c.mu.Unlock()
	var cl *sdsclient.Client
	for i := range n {
		if i%streamsPerConn == 0 {
			var err error
			if cl, err = sdsclient.Dial(c.socket); err != nil {
				c.fail(err)
				return
			}
		}
		go c.follow(cl, base+i, silent)
	}
}

// follow keeps stream i open on cl for the child's life: gRPC reconnects cl when the agent
// comes back, and the stream is opened again on it.
func (c *childStreams) follow(cl *sdsclient.Client, i int, silent bool) {
	asked := false
	for {
		st, err := cl.Open(context.Background(), "sidecar-child", sdsclient.Credential{})
		if err == nil {
			if !silent || !asked {
				err = st.Request(true, "default", "ROOTCA")
				asked = true
			}
			for err == nil {
				var secrets map[string]*tlsv3.Secret
				if secrets, err = st.Recv(); err == nil {
					c.record(i, describe(secrets))
				}
			}
		}
		c.fail(err)
		time.Sleep(100 * time.Millisecond) // as a sidecar backs off before it reconnects
	}
}

func (c *childStreams) record(i int, a childAnswer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last[i], c.at[i] = a, c.epoch
}

func (c *childStreams) fail(err error) {
	if err == nil || err == io.EOF {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.errs == nil {
		c.errs = map[string]bool{}
	}
	if len(c.errs) < 20 {
		c.errs[status.Convert(err).Message()] = true
	}
}

func (c *childStreams) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	c.errs = nil
	return c.epoch
}

func (c *childStreams) status() childAnswer {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := childAnswer{Streams: len(c.last), Epoch: c.epoch}
	ids, keys, serials := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, l := range c.last {
		if c.at[i] != c.epoch || l.ID == "" {
			continue
		}
		a.Fresh++
		ids[l.ID], keys[l.Key], serials[l.Serial] = true, true, true
	}
	for k := range ids {
		a.IDs = append(a.IDs, k)
	}
	for k := range keys {
		a.Keys = append(a.Keys, k)
	}
	for k := range serials {
		a.Serials = append(a.Serials, k)
	}
	for k := range c.errs {
		a.Errors = append(a.Errors, k)
	}
	return a
}

// sidecarChild is the test's handle on a child.
type sidecarChild struct {
	t   testing.TB
	cmd *exec.Cmd
	in  io.WriteCloser
	out *json.Decoder
}

// startSidecarChild starts a child that talks to the agent on socket; it is killed when t ends.
func startSidecarChild(t testing.TB, socket string) *sidecarChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), sidecarChildEnv+"="+socket)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &sidecarChild{t: t, cmd: cmd, in: in, out: json.NewDecoder(out)}
}

func (c *sidecarChild) pid() int { return c.cmd.Process.Pid }

// do sends one command and returns the answer.
func (c *sidecarChild) do(cmd string) childAnswer {
	c.t.Helper()
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		c.t.Fatalf("sidecar child: %v", err)
	}
	var a childAnswer
	if err := c.out.Decode(&a); err != nil {
		c.t.Fatalf("sidecar child: reading the answer to %q: %v", cmd, err)
	}
	return a
}

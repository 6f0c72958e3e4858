// Package stack starts the Portcullis services as real processes on ephemeral loopback ports,
// wired together with bootstrap certificates and a dev token issuer. The dev stack
// (`go tool task run`) and the e2e suite both use it.
package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is one running service binary.
type Process struct {
	Name string
	bin  string
	args []string
	log  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	addrs  map[string]string // listener name -> bound address, from the "listening" log lines
	tail   []string
	exited chan struct{}
	seen   chan struct{} // pinged on every new listener
}

func newProcess(name, bin, logFile string, args ...string) *Process {
	return &Process{Name: name, bin: bin, args: args, log: logFile}
}

// start launches the process and waits until every listener in want has announced its address.
func (p *Process) start(ctx context.Context, want ...string) error {
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return err
	}
	cmd.Stdout = logf
	p.mu.Lock()
	p.cmd, p.addrs, p.tail = cmd, map[string]string{}, nil
	p.exited, p.seen = make(chan struct{}), make(chan struct{}, 1)
	p.mu.Unlock()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	go p.scan(stderr, logf, cmd)

	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		if missing := p.missing(want); len(missing) == 0 {
			return nil
		}
		select {
		case <-p.seen:
		case <-p.exited:
			return fmt.Errorf("%s exited during start-up:\n%s", p.Name, p.Tail())
		case <-deadline.C:
			return fmt.Errorf("%s did not open %v within 30s:\n%s", p.Name, p.missing(want), p.Tail())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *Process) scan(r io.Reader, logf *os.File, cmd *exec.Cmd) {
	defer func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		var rec struct{ Msg, Listener, Addr string }
		_ = json.Unmarshal([]byte(line), &rec)
		p.mu.Lock()
		p.tail = append(p.tail, line)
		if len(p.tail) > 40 {
			p.tail = p.tail[1:]
		}
		if rec.Msg == "listening" && rec.Listener != "" {
			p.addrs[rec.Listener] = rec.Addr
			select {
			case p.seen <- struct{}{}:
			default:
			}
		}
		p.mu.Unlock()
	}
}

func (p *Process) missing(want []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, w := range want {
		if p.addrs[w] == "" {
			out = append(out, w)
		}
	}
	return out
}

// Addr is the bound address of a listener ("grpc", "admin", "sds").
func (p *Process) Addr(listener string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[listener]
}

// Tail is the process's last log lines.
func (p *Process) Tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// Stop sends SIGTERM and waits (SIGKILL after 10s). It reports whether the exit was clean.
func (p *Process) Stop() error { return p.signal(syscall.SIGTERM) }

// Kill stops the process at once, as a crash would.
func (p *Process) Kill() error { return p.signal(syscall.SIGKILL) }

func (p *Process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		return fmt.Errorf("%s did not stop within 10s of %s", p.Name, sig)
	}
	if sig == syscall.SIGTERM && cmd.ProcessState != nil && !cmd.ProcessState.Success() {
		return fmt.Errorf("%s exited with %s:\n%s", p.Name, cmd.ProcessState, p.Tail())
	}
	return nil
}

func logPath(dir, name string) string { return filepath.Join(dir, "logs", name+".log") }

// Pid is the process id of the running service (0 before start). Load tools read its memory
// from /proc/<pid>.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

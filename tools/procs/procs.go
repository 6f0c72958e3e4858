// Package procs runs server binaries for tests and dev tools: one process with its output in a
// log file, started in its own process group and killed by the kernel if the process that started
// it dies without stopping it (a test timeout's panic, SIGKILL), so that no server outlives its
// test. kubetest and kubecluster use it.
package procs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is one server binary. Set the exported fields, then Start.
type Process struct {
	Name string
	Bin  string
	Args []string
	Log  string   // the file stdout and stderr are appended to
	Env  []string // nil inherits the environment
	// Unshareflags are namespaces (syscall.CLONE_NEWNS, ...) the process gets new ones of. With
	// CLONE_NEWNS, Go also makes every mount in the new namespace private.
	Unshareflags uintptr

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts the process.
func (p *Process) Start() error {
	f, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = p.Env
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Unshareflags = p.Unshareflags
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return nil
}

// Pid is the process id, 0 before Start.
func (p *Process) Pid() int {
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process was started and has not exited.
func (p *Process) Running() bool {
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, then SIGKILL after grace. Stopping a stopped process does nothing.
func (p *Process) Stop(grace time.Duration) {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Tail is the end of the process's log, for failure messages.
func (p *Process) Tail() string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// Exited describes how the process ended, with the end of its log; empty while it runs.
func (p *Process) Exited() string {
	if p.Running() || p.done == nil {
		return ""
	}
	return fmt.Sprintf("%s exited (%v); log %s:\n%s", p.Name, p.err, p.Log, p.Tail())
}

// WaitFor polls ready until it returns nil, the process exits or timeout passes.
func (p *Process) WaitFor(timeout time.Duration, ready func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return p.WaitContext(ctx, func(context.Context) error { return ready() })
}

// WaitContext polls ready until it returns nil, the process exits or ctx ends.
func (p *Process) WaitContext(ctx context.Context, ready func(context.Context) error) error {
	var last error
	for {
		if !p.Running() {
			return fmt.Errorf("%s exited (%v); log %s:\n%s", p.Name, p.err, p.Log, p.Tail())
		}
		if last = ready(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v (%w); log %s:\n%s", p.Name, last, ctx.Err(), p.Log, p.Tail())
		case <-time.After(50 * time.Millisecond): // polling a server that has no readiness signal
		}
	}
}

// FreePorts returns n distinct loopback ports that were free a moment ago. Most servers cannot
// report a port they picked, so this is as ephemeral as they allow.
func FreePorts(n int) ([]int, error) {
	var ports []int
	var lis []net.Listener
	defer func() {
		for _, l := range lis {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lis = append(lis, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	if len(ports) != n {
		return nil, errors.New("could not reserve ports")
	}
	return ports, nil
}

// HostPort is "127.0.0.1:port".
func HostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

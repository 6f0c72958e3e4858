package procs

import "syscall"

// sysProcAttr puts a server in its own process group, so that a Ctrl-C of `go test` does not race
// the test's own stop, and has the kernel kill it if the test process dies without stopping it
// (a timeout panic, SIGKILL): no etcd or kube-apiserver outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

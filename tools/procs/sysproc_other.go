//go:build !linux

package procs

import "syscall"

// sysProcAttr puts a server in its own process group, so that a Ctrl-C of `go test` does not race
// the test's own stop.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

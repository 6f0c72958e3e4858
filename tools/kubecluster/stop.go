package kubecluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Stop stops every process of the cluster, removes what it put on the host (see cleanupHost)
// and its directory if Start made it. Calling it again returns the first call's result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		c.dns.close()
		// Reverse start order: the node first, etcd last.
		for i := len(c.procs) - 1; i >= 0; i-- {
			t := time.Now()
			c.procs[i].Stop(10 * time.Second)
			c.log.Debug("stopped", "component", c.procs[i].Name, "took", time.Since(t).Round(time.Millisecond))
		}
		switch {
		case c.hostTouched:
			c.stopErr = cleanupHost(hostState{Dir: c.dir, Bridge: c.net.bridge}, c.ownDir)
		case c.ownDir:
			c.stopErr = os.RemoveAll(c.dir)
		}
		if c.opts.Unlocking != nil {
			c.opts.Unlocking()
		}
		if c.stopErr != nil && c.hostTouched {
			c.lock.unlock() // keep the record: the next Start or Down retries the cleanup
		} else {
			c.lock.release()
		}
	})
	return c.stopErr
}

// SaveLogs copies the components' logs (<component>.log) into dir, for a failed run whose
// cluster directory Stop removes.
func (c *Cluster) SaveLogs(dir string) error {
	logs, err := filepath.Glob(c.path("*.log"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, l := range logs {
		errs = append(errs, copyFile(l, filepath.Join(dir, filepath.Base(l))))
	}
	return errors.Join(errs...)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// PIDs are the process ids of the cluster's components by name (etcd, kube-apiserver, ...,
// containerd, kubelet, kube-proxy), plus containerd's shims as containerd-shim-<n>, for
// measuring the cluster.
func (c *Cluster) PIDs() map[string]int {
	pids := map[string]int{}
	for _, p := range c.procs {
		if p.Running() {
			pids[p.Name] = p.Pid()
		}
	}
	for i, pid := range shimProcs(c.dir) {
		pids[fmt.Sprintf("containerd-shim-%d", i)] = pid
	}
	return pids
}

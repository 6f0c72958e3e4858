package kubecluster

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Stop stops every process of the cluster, removes what it put on the host (see cleanupHost)
// and its directory if Start made it. Calling it again returns the first call's result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		// Reverse start order: the node first, etcd last.
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].Stop(10 * time.Second)
		}
		var errs []error
		if c.lock != nil {
			errs = append(errs, cleanupHost(hostState{Dir: c.dir, Bridge: c.net.bridge}, c.ownDir))
			c.lock.release()
		}
		c.stopErr = errors.Join(errs...)
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

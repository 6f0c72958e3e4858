package podcgroup_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/portcullis-mesh/portcullis/tools/podcgroup"
)

func TestProcessMovesBetweenPodsAndTheTreeIsRemoved(t *testing.T) {
	var base string
	t.Run("pods", func(t *testing.T) {
		c := podcgroup.New(t)
		base = c.Outside()
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		dir, cid := c.Pod("0f6c8a52-3b1e-4d7a-9c2f-5e8b1a6d4c3f")
		c.Move(cmd.Process.Pid, dir)
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "cgroup"))
		if err != nil {
			t.Fatal(err)
		}
		want := c.CgroupRoot() + "/kubepods/besteffort/pod0f6c8a52-3b1e-4d7a-9c2f-5e8b1a6d4c3f/" + cid
		if !strings.Contains(string(b), want) {
			t.Fatalf("/proc/<pid>/cgroup =\n%s\nwant a line ending in %s", b, want)
		}
	})
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		t.Fatalf("%s left behind (%v)", base, err)
	}
}

package kubecluster_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/portcullis-mesh/portcullis/tools/kubecluster"
)

// crashChildEnv makes the test binary a process that starts a cluster with a running pod, prints
// the host snapshot it took under the lock and then "ready", and waits to be killed.
const crashChildEnv = "KUBECLUSTER_TEST_CRASH_CHILD"

func runCrashChild() {
	ctx := context.Background()
	out := json.NewEncoder(os.Stdout)
	c, err := kubecluster.Start(ctx, kubecluster.Options{
		LockWait: kubecluster.SharedLockWait,
		Locked: func() {
			before, err := kubecluster.SnapshotHost(socketDir)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			out.Encode(before)
		},
	})
	if err == nil {
		pod := podSpec("pause", kubecluster.PauseImage)
		if _, err = c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err == nil {
			_, err = c.WaitForPod(ctx, "default", pod.Name, corev1.PodRunning)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {} // until SIGKILL
}

// TestDownCleansUpAfterKilledProcess kills the process that started a cluster (SIGKILL: no
// Stop). Its components die with it (Pdeathsig), but containerd's shims and the pod do not, and
// the bridge, nftables tables and cgroups stay; Down (what `cluster:down` and the next Start run)
// removes all of it.
func TestDownCleansUpAfterKilledProcess(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 16<<20)
	var before kubecluster.HostSnapshot
	if !lines.Scan() || json.Unmarshal(lines.Bytes(), &before) != nil {
		t.Fatalf("child: no snapshot (%v)", lines.Err())
	}
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("child: got %q, want ready", lines.Text())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true
	left, err := kubecluster.SnapshotHost(socketDir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(before.Diff(left), "\n"), "containerd shims") {
		t.Fatal("no shim outlived the killed process: this test no longer tests the cleanup of a dead cluster")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var after kubecluster.HostSnapshot
	var afterErr error
	if err := kubecluster.DownWithHook(ctx, slog.New(slog.DiscardHandler), func() {
		after, afterErr = kubecluster.SnapshotHost(socketDir)
	}); err != nil {
		t.Fatal(err)
	}
	if afterErr != nil {
		t.Fatal(afterErr)
	}
	if diff := before.Diff(after); len(diff) > 0 {
		t.Fatalf("the host differs after Down:\n%s", strings.Join(diff, "\n"))
	}
}

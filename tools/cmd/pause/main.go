// Command pause is the process of the pod sandbox image (containerd's sandbox_image): it holds
// the pod's namespaces and exits 0 on SIGTERM or SIGINT. As PID 1 it ignores every other
// signal a handler is not installed for. It does not reap zombies: no pod here shares its
// process namespace.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Fprintln(os.Stderr, "pause: waiting for SIGTERM or SIGINT")
	<-ctx.Done()
}

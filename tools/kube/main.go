// Command kube is the upstream Kubernetes control plane and node (k8s.io/kubernetes v1.32.13) in one
// binary, built from the module proxy so tests can run a real cluster on a machine that has only Go
// and Debian packages: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
// kube-proxy share one compile (~5 min cold instead of five times that). It picks the component by
// the name it is run as (symlinks kube-apiserver, kubelet, ...) or by its first argument
// (`kube kubelet --config ...`), then runs exactly what the upstream cmd/<component>/main.go runs.
//
// This module is deliberately outside go.work: it pulls in all of Kubernetes and is built once into
// .cache/bin by `go tool task kube`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // for timeZone support in CronJob

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// components maps a component's name to the command its upstream main runs.
var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 kubelet.NewKubeletCommand,
	"kube-proxy":              proxy.NewProxyCommand,
}

func main() {
	if newCommand, ok := components[filepath.Base(os.Args[0])]; ok {
		os.Exit(cli.Run(newCommand()))
	}
	if len(os.Args) > 1 {
		if newCommand, ok := components[os.Args[1]]; ok {
			command := newCommand()
			command.SetArgs(os.Args[2:])
			os.Exit(cli.Run(command))
		}
	}
	names := make([]string, 0, len(components))
	for name := range components {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [flags], or run it as a link named COMPONENT; COMPONENT is one of %s\n",
		filepath.Base(os.Args[0]), strings.Join(names, ", "))
	os.Exit(2)
}

// Command kube-apiserver is the upstream Kubernetes API server (k8s.io/kubernetes v1.32.13), built
// from the module proxy so tests can run a real API server on a machine that has only Go. It
// mirrors cmd/kube-apiserver/apiserver.go. This module is deliberately outside go.work: it pulls
// in all of Kubernetes and is built once into .cache/bin by `go tool task kube-apiserver`.
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}

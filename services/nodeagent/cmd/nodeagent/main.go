// Command nodeagent serves workload certificates to the sidecars of one node over SDS.
package main

import (
	"log/slog"
	"os"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/app"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/config"
)

func main() {
	var cfg config.Config
	os.Exit(lifecycle.Main("nodeagent", os.Args[1:], &cfg, func(logger *slog.Logger) (lifecycle.Runnable, error) {
		return app.New(cfg, logger)
	}))
}

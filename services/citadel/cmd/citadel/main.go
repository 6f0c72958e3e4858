// Command citadel is Portcullis' CA front: node agents send it CSRs with workload tokens over
// mTLS; it authorizes them against the pods mcp-sync reports and has kms-adapter sign.
package main

import (
	"log/slog"
	"os"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/app"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/config"
)

func main() {
	var cfg config.Config
	os.Exit(lifecycle.Main("citadel", os.Args[1:], &cfg, func(logger *slog.Logger) (lifecycle.Runnable, error) {
		return app.New(cfg, logger)
	}))
}

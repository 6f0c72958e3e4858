// Command kms-adapter signs workload certificates for citadel with the mesh CA (the embedded local
// CA, or Vault PKI) and serves the trust bundle.
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/app"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/config"
)

func main() {
	var cfg config.Config
	os.Exit(lifecycle.Main("kms-adapter", os.Args[1:], &cfg, func(logger *slog.Logger) (lifecycle.Runnable, error) {
		return app.New(context.Background(), cfg, logger)
	}))
}

// Command mcp-sync serves Pods, ServiceAccounts and Namespaces over MCP-over-xDS to node agents
// (each its own node's share) and to citadel (everything).
package main

import (
	"log/slog"
	"os"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/app"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/config"
)

func main() {
	var cfg config.Config
	os.Exit(lifecycle.Main("mcp-sync", os.Args[1:], &cfg, func(logger *slog.Logger) (lifecycle.Runnable, error) {
		return app.New(cfg, logger)
	}))
}

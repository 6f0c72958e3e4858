// Command natsd runs the Portcullis NATS server (JetStream, clients admitted by their
// control-plane certificate) as a process of its own: what kms-adapter embeds by default, for
// deployments and tests that want the event bus to outlive kms-adapter.
package main

import (
	"flag"
	"log/slog"
	"os"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/libs/natsserver"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

type config struct {
	listen, storeDir string
	tls              servicetls.Files
}

func (c *config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.listen, "listen", "127.0.0.1:4222", "client address (port 0 picks a free port)")
	fs.StringVar(&c.storeDir, "store-dir", "./var/lib/portcullis/nats", "JetStream file store")
	c.tls.RegisterFlags(fs)
}

func (c *config) Validate() error { return c.tls.Validate() }

func main() {
	var cfg config
	os.Exit(lifecycle.Main("natsd", os.Args[1:], &cfg, func(logger *slog.Logger) (lifecycle.Runnable, error) {
		id, err := servicetls.Load(cfg.tls)
		if err != nil {
			return nil, err
		}
		s, err := natsserver.Start(natsserver.Config{Listen: cfg.listen, StoreDir: cfg.storeDir, Identity: id, Logger: logger})
		if err != nil {
			return nil, err
		}
		return s, nil
	}))
}

// Command vaultserver is HashiCorp Vault's own CLI (server included), built from source
// because no Debian package or downloadable binary can be had on the build machines. Tests
// run it as `server -dev` on a loopback port. It is a module of its own, outside go.work,
// so its ~700 dependencies never enter the default build; `go tool task vault:build`
// builds it once into .cache/bin.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() { os.Exit(command.Run(os.Args[1:])) }

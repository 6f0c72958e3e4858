module github.com/portcullis-mesh/portcullis/tools/vaultserver

go 1.26

require github.com/hashicorp/vault v1.21.0

// Only this combination builds (see REAL-SERVERS.md): vault v1.21.0 with sdk v0.20.0 and api
// v1.22.0; the two forks replace modules the proxy no longer serves at the pinned versions.
replace github.com/99designs/keyring => github.com/Jeffail/keyring v1.2.3

replace github.com/ma314smith/signedxml v1.1.1 => github.com/moov-io/signedxml v1.1.1

replace github.com/hashicorp/vault/sdk => github.com/hashicorp/vault/sdk v0.20.0

replace github.com/hashicorp/vault/api => github.com/hashicorp/vault/api v1.22.0

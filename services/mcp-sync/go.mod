module github.com/portcullis-mesh/portcullis/services/mcp-sync

go 1.26

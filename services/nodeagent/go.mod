module github.com/portcullis-mesh/portcullis/services/nodeagent

go 1.26

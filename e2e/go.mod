module github.com/portcullis-mesh/portcullis/e2e

go 1.26

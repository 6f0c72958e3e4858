module github.com/portcullis-mesh/portcullis/services/kms-adapter

go 1.26

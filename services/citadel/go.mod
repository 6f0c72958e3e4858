module github.com/portcullis-mesh/portcullis/services/citadel

go 1.26

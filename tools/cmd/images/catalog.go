package main

import (
	"fmt"
	"strings"

	"github.com/portcullis-mesh/portcullis/tools/ociimage"
)

// image is one image the release ships: a main package built into a static binary.
type image struct {
	name        string // binary and image name; the entrypoint is /<name>
	pkg         string // main package, relative to the repository root
	user        string // "uid:gid"; empty is root
	description string
}

// catalog is every image, in build order. All run as the distroless "nonroot" user except the
// node agent: it creates the SDS socket in a hostPath directory (Istio's
// /var/run/secrets/workload-spiffe-uds by default) that the kubelet creates owned by root, so
// it runs as uid 0. The chart drops all its capabilities: root needs none to create a socket in
// a directory it owns.
var catalog = []image{
	{"citadel", "./services/citadel/cmd/citadel", ociimage.NonRootUser, "Portcullis CA front: authorizes workload CSRs"},
	{"nodeagent", "./services/nodeagent/cmd/nodeagent", "", "Portcullis node agent: serves SVIDs to pods over SDS"},
	{"kms-adapter", "./services/kms-adapter/cmd/kms-adapter", ociimage.NonRootUser, "Portcullis signer: local CA or Vault"},
	{"mcp-sync", "./services/mcp-sync/cmd/mcp-sync", ociimage.NonRootUser, "Portcullis pod and policy sync from the Kubernetes API"},
	{"natsd", "./tools/cmd/natsd", ociimage.NonRootUser, "Portcullis event bus (NATS JetStream)"},
	{"portcullisctl", "./tools/cmd/portcullisctl", ociimage.NonRootUser, "Portcullis operator CLI"},
	{"sdsprobe", "./tools/cmd/sdsprobe", ociimage.NonRootUser, "Portcullis test workload: SVID over SDS, mTLS handshakes"},
	{"pause", "./tools/cmd/pause", ociimage.NonRootUser, "Pod sandbox process"},
}

// selectImages returns the catalog entries named in only, or all of them when only is empty.
func selectImages(only []string) ([]image, error) {
	if len(only) == 0 {
		return catalog, nil
	}
	byName := map[string]image{}
	var known []string
	for _, img := range catalog {
		byName[img.name] = img
		known = append(known, img.name)
	}
	var out []image
	for _, n := range only {
		img, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("unknown image %q (known: %s)", n, strings.Join(known, ", "))
		}
		out = append(out, img)
	}
	return out, nil
}

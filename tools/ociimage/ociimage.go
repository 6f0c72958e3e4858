// Package ociimage turns one static binary into a one-layer OCI image and writes it as an OCI
// image-layout tar archive that `ctr -n k8s.io images import` (containerd 1.6+) and
// `docker load` (25+) accept, under the image's own reference and with no registry.
//
// The image has no shell and no package manager: its one layer holds the binary, /etc/passwd
// and /etc/group (root and the distroless-style "nonroot" user 65532), and nothing else.
// Images are reproducible: the same Spec and the same binary give the same manifest digest,
// because every file has a fixed mtime and uid/gid 0, entries are sorted, and the config's
// created time is Spec.Created (the commit time, or SOURCE_DATE_EPOCH), never the clock.
package ociimage

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NonRootUser is the distroless "nonroot" user and group that /etc/passwd and /etc/group name.
const NonRootUser = "65532:65532"

// Annotations on the manifest's entry in index.json. containerd (and docker load) name an
// imported image after AnnotationContainerdImageName first, verbatim; only without it do they
// fall back to AnnotationRefName, which ctr's --base-name option filters and rewrites. So the
// full reference goes in the containerd annotation and, as the OCI image-layout spec intends,
// only the tag goes in ref.name (what skopeo's oci-archive:<file>:<tag> looks up).
const (
	AnnotationContainerdImageName = "io.containerd.image.name"
	AnnotationRefName             = "org.opencontainers.image.ref.name"
)

// Spec describes one image.
type Spec struct {
	// Ref is the image's full reference, for example "ghcr.io/portcullis-mesh/citadel:0.1.0".
	Ref string
	// Binary is the path of the static executable to put in the image.
	Binary string
	// Entrypoint defaults to ["/<base name of Binary>"].
	Entrypoint []string
	// Args is the image's default command (Cmd); empty means none.
	Args []string
	// User is "uid:gid", for example NonRootUser; empty means root.
	User string
	// Labels become the config's labels (org.opencontainers.image.version, revision, ...).
	Labels map[string]string
	// Created is the image's creation time and every file's mtime. The zero time means the
	// Unix epoch, which keeps the image reproducible.
	Created time.Time
	// OS and Arch default to linux and the architecture of this Go toolchain (runtime.GOARCH);
	// Binary must have been built for them.
	OS, Arch string
}

// Write builds the image that spec describes and writes it atomically to archivePath as an
// OCI image-layout tar. It returns the manifest digest ("sha256:...").
func Write(archivePath string, spec Spec) (string, error) {
	ref, err := name.ParseReference(spec.Ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", spec.Ref, err)
	}
	tag, ok := ref.(name.Tag)
	if !ok {
		return "", fmt.Errorf("image reference %q: want a tag, not a digest", spec.Ref)
	}
	img, err := Build(spec)
	if err != nil {
		return "", err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("image digest: %w", err)
	}
	plat := spec.platform()
	index := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add: img,
		Descriptor: v1.Descriptor{
			Platform: &plat,
			Annotations: map[string]string{
				AnnotationContainerdImageName: containerdName(tag),
				AnnotationRefName:             tag.TagStr(),
			},
		},
	})
	if err := writeLayoutTar(archivePath, index); err != nil {
		return "", fmt.Errorf("writing %s: %w", archivePath, err)
	}
	return digest.String(), nil
}

// Build returns the image that spec describes, without writing it anywhere.
func Build(spec Spec) (v1.Image, error) {
	if spec.Binary == "" {
		return nil, errors.New("image spec: no binary")
	}
	bin, err := os.ReadFile(spec.Binary)
	if err != nil {
		return nil, fmt.Errorf("reading binary: %w", err)
	}
	created := spec.Created.UTC().Truncate(time.Second)
	if created.IsZero() {
		created = time.Unix(0, 0).UTC()
	}
	binName := "/" + filepath.Base(spec.Binary)
	layerTar, err := rootfsTar(created, binName, bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(openBytes(layerTar), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}

	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "ociimage: COPY " + path.Base(binName) + " " + binName,
			Comment:   "static binary, no shell, no package manager",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("appending layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg = cfg.DeepCopy()
	plat := spec.platform()
	cfg.OS, cfg.Architecture, cfg.Variant = plat.OS, plat.Architecture, plat.Variant
	cfg.Created = v1.Time{Time: created}
	cfg.Author = ""
	cfg.Config = v1.Config{
		Entrypoint: spec.Entrypoint,
		Cmd:        spec.Args,
		User:       spec.User,
		WorkingDir: "/",
		Labels:     spec.Labels,
	}
	if len(cfg.Config.Entrypoint) == 0 {
		cfg.Config.Entrypoint = []string{binName}
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("setting config: %w", err)
	}
	return img, nil
}

// containerdName is the reference as containerd and the kubelet normalize it: Docker Hub is
// "docker.io" (ggcr says "index.docker.io"), and its official images are under "library/".
func containerdName(tag name.Tag) string {
	registry := tag.RegistryStr()
	if registry == name.DefaultRegistry {
		registry = "docker.io"
	}
	return registry + "/" + tag.RepositoryStr() + ":" + tag.TagStr()
}

func (s Spec) platform() v1.Platform {
	p := v1.Platform{OS: s.OS, Architecture: s.Arch}
	if p.OS == "" {
		p.OS = "linux"
	}
	if p.Architecture == "" {
		p.Architecture = runtime.GOARCH
	}
	if p.Architecture == "arm64" {
		p.Variant = "v8"
	}
	return p
}

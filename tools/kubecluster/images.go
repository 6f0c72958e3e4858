package kubecluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/portcullis-mesh/portcullis/libs/workspace"
	"github.com/portcullis-mesh/portcullis/tools/ociimage"
)

// PauseImage is the pod sandbox image, containerd's sandbox_image: tools/cmd/pause, built and
// imported by Start.
const PauseImage = "localhost/portcullis/pause:kubecluster"

// ImportImage imports an OCI image archive into the node's containerd (the k8s.io namespace the
// kubelet uses), named as the archive names it. Pods then run it with imagePullPolicy: Never.
func (c *Cluster) ImportImage(ctx context.Context, archive string) error {
	return runQuiet(ctx, c.bins.ctr, "--address", c.ContainerdSocket(), "-n", "k8s.io", "images", "import", archive)
}

// BuildImage builds the main package pkg (an import path, or a path relative to the
// repository root such as "./tools/cmd/pause") as a static binary and packs it into a one-layer
// OCI archive in dir named ref, running as a non-root user. It returns the archive's path.
func BuildImage(ctx context.Context, dir, pkg, ref string) (string, error) {
	root, err := workspace.Root()
	if err != nil {
		return "", err
	}
	name := filepath.Base(strings.TrimSuffix(pkg, "/"))
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v: %s", pkg, err, bytes.TrimSpace(out))
	}
	archive := filepath.Join(dir, name+".oci.tar")
	if _, err := ociimage.Write(archive, ociimage.Spec{Ref: ref, Binary: bin, User: ociimage.NonRootUser}); err != nil {
		return "", err
	}
	return archive, nil
}

// importImages builds and imports the pause image, then Options.Images.
func (c *Cluster) importImages(ctx context.Context) error {
	dir := c.path("images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pause, err := BuildImage(ctx, dir, "./tools/cmd/pause", PauseImage)
	if err != nil {
		return fmt.Errorf("pause image: %w", err)
	}
	for _, archive := range append([]string{pause}, c.opts.Images...) {
		if err := c.ImportImage(ctx, archive); err != nil {
			return err
		}
	}
	return nil
}

func runQuiet(ctx context.Context, bin string, args ...string) error {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

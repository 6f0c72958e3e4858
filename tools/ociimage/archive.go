package ociimage

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// writeLayoutTar writes index as an OCI image layout (ggcr's layout package) into a temporary
// directory, then packs that directory into archivePath: entries sorted (fs.WalkDir walks in
// lexical order), 0:0, mtime the Unix epoch, so the archive's bytes are as reproducible as the
// image. The file appears only when complete.
func writeLayoutTar(archivePath string, index v1.ImageIndex) error {
	dir, err := os.MkdirTemp(filepath.Dir(archivePath), ".oci-layout-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if _, err := layout.Write(filepath.Join(dir, "layout"), index); err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	tmp := filepath.Join(dir, "archive.tar")
	if err := packDir(tmp, filepath.Join(dir, "layout")); err != nil {
		return err
	}
	return os.Rename(tmp, archivePath)
}

func packDir(archivePath, root string) (err error) {
	f, err := os.OpenFile(archivePath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	tw := tar.NewWriter(f)
	epoch := time.Unix(0, 0).UTC()
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil || p == root {
			return walkErr
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: epoch, Mode: 0o644, Typeflag: tar.TypeReg}
		if d.IsDir() {
			hdr.Name, hdr.Mode, hdr.Typeflag = hdr.Name+"/", 0o755, tar.TypeDir
			return tw.WriteHeader(hdr)
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		info, err := src.Stat()
		if err != nil {
			return err
		}
		hdr.Size = info.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		return fmt.Errorf("packing %s: %w", root, err)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Sync()
}

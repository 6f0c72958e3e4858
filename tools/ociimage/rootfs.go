package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Files of the root filesystem besides the binary. No home directory exists: the services
// write only to mounted volumes (the chart mounts an emptyDir where a service needs scratch
// space), and a read-only root filesystem is the chart's default.
const (
	etcPasswd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"
	etcGroup = "root:x:0:\n" +
		"nonroot:x:65532:\n"
)

// rootfsTar returns the layer's uncompressed tar: /etc, /etc/group, /etc/passwd and the binary
// at binPath, sorted by name, all owned by 0:0 with mtime created.
func rootfsTar(created time.Time, binPath string, bin []byte) ([]byte, error) {
	type entry struct {
		name string
		mode int64
		dir  bool
		body []byte
	}
	entries := []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, body: []byte(etcGroup)},
		{name: "etc/passwd", mode: 0o644, body: []byte(etcPasswd)},
		{name: strings.TrimPrefix(binPath, "/"), mode: 0o755, body: bin},
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name:     e.name,
			Mode:     e.mode,
			ModTime:  created,
			Uid:      0,
			Gid:      0,
			Uname:    "",
			Gname:    "",
			Format:   tar.FormatPAX,
			Typeflag: tar.TypeReg,
			Size:     int64(len(e.body)),
		}
		if e.dir {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer tar %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("layer tar %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

func openBytes(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every catalog entry names a main package of the repository.
func TestCatalogPackagesAreMains(t *testing.T) {
	for _, img := range catalog {
		src, err := os.ReadFile(filepath.Join("../../..", img.pkg, "main.go"))
		if err != nil {
			t.Errorf("%s: %v", img.name, err)
			continue
		}
		if !bytes.Contains(src, []byte("\npackage main\n")) {
			t.Errorf("%s: %s/main.go is not package main", img.name, img.pkg)
		}
		if filepath.Base(img.pkg) != img.name {
			t.Errorf("%s: package %s builds a binary of another name", img.name, img.pkg)
		}
	}
}

func TestSelectImages(t *testing.T) {
	got, err := selectImages([]string{"pause", "citadel"})
	if err != nil || len(got) != 2 || got[0].name != "pause" || got[1].name != "citadel" {
		t.Fatalf("selectImages: %v, %v", got, err)
	}
	if _, err := selectImages([]string{"nope"}); err == nil || !strings.Contains(err.Error(), "known: citadel") {
		t.Fatalf("unknown image: %v", err)
	}
	if all, _ := selectImages(nil); len(all) != len(catalog) {
		t.Fatalf("no -only selects %d images, want all %d", len(all), len(catalog))
	}
}

// The whole command, twice, on the smallest image: same digest, archive and index.
func TestBuildIsReproducible(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	var digests []string
	for _, out := range []string{t.TempDir(), t.TempDir()} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"-only", "pause", "-tag", "9.9.9", "-repo", "example.test/pc", "-out", out}, &stdout, &stderr)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		if !strings.Contains(stdout.String(), "example.test/pc/pause:9.9.9") {
			t.Errorf("report lacks the ref:\n%s", stdout.String())
		}
		b, err := os.ReadFile(filepath.Join(out, "images.json"))
		if err != nil {
			t.Fatal(err)
		}
		var index []result
		if err := json.Unmarshal(b, &index); err != nil || len(index) != 1 {
			t.Fatalf("images.json: %v: %s", err, b)
		}
		if index[0].Ref != "example.test/pc/pause:9.9.9" || index[0].Archive != filepath.Join(out, "pause.tar") {
			t.Errorf("images.json entry %+v", index[0])
		}
		digests = append(digests, index[0].Digest)
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds of the same source: %s and %s", digests[0], digests[1])
	}
}

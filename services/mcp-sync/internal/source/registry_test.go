package source

import (
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestUnknownSourceIsALoudError(t *testing.T) {
	_, err := New("kubernetes-typo", Options{})
	if err == nil {
		t.Fatal("New accepted an unknown source")
	}
	for _, want := range []string{`"kubernetes-typo"`, "file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestFileSourceIsBuiltByName(t *testing.T) {
	s, err := New("file", Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ManifestsDir: t.TempDir()})
	if err != nil || s == nil {
		t.Fatalf("New(file) = %v, %v", s, err)
	}
	if _, err := New("file", Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err == nil {
		t.Error("the file source accepted an empty directory name")
	}
}

// Package workspace finds the repository's root from a test or tool that runs somewhere inside
// it, for the binaries the project builds once into .cache/bin (Vault, kube-apiserver).
package workspace

import (
	"errors"
	"os"
	"path/filepath"
)

// Root is the nearest directory at or above the working directory that holds go.work (tests run
// in their package's directory).
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory")
		}
		dir = parent
	}
}

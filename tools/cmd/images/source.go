package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// source is what the images record about the code they were built from.
type source struct {
	root     string    // repository root (the directory of go.work)
	revision string    // commit hash, "unknown" outside a git checkout
	created  time.Time // SOURCE_DATE_EPOCH, else the commit time, else the Unix epoch
}

// findSource locates the repository root from `go env GOWORK` and reads the revision and
// commit time from git. SOURCE_DATE_EPOCH, when set, overrides the commit time, as
// reproducible-builds.org specifies.
func findSource() (source, error) {
	out, err := exec.Command("go", "env", "GOWORK").Output()
	if err != nil {
		return source{}, fmt.Errorf("go env GOWORK: %w", err)
	}
	work := strings.TrimSpace(string(out))
	if work == "" || work == "off" {
		return source{}, fmt.Errorf("not inside the Portcullis workspace (no go.work found)")
	}
	src := source{root: filepath.Dir(work), revision: "unknown", created: time.Unix(0, 0).UTC()}
	if rev, err := git(src.root, "rev-parse", "HEAD"); err == nil {
		src.revision = rev
	}
	if ct, err := git(src.root, "log", "-1", "--format=%ct"); err == nil {
		if sec, err := strconv.ParseInt(ct, 10, 64); err == nil {
			src.created = time.Unix(sec, 0).UTC()
		}
	}
	if v, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); ok {
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return source{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", v, err)
		}
		src.created = time.Unix(sec, 0).UTC()
	}
	return src, nil
}

// defaultTag is the chart's appVersion when charts/portcullis/Chart.yaml has one, so the chart
// and the images agree without a flag; else `git describe`; else "dev".
func (s source) defaultTag() string {
	if b, err := os.ReadFile(filepath.Join(s.root, "charts", "portcullis", "Chart.yaml")); err == nil {
		var chart struct {
			AppVersion string `json:"appVersion"`
		}
		if yaml.Unmarshal(b, &chart) == nil && chart.AppVersion != "" {
			return chart.AppVersion
		}
	}
	if d, err := git(s.root, "describe", "--tags", "--always", "--dirty"); err == nil {
		return d
	}
	return "dev"
}

func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

package stack

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"
)

// Pod is what the dev token issuer needs to know about a pod in the manifests.
type Pod struct {
	Namespace, Name, UID, ServiceAccount, Node string
}

// Key is "<namespace>/<name>".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// LoadPods reads the Pods of a manifests directory (the same files mcp-sync serves), so the dev
// stack can mint tokens for them as the API server's TokenRequest would.
func LoadPods(dir string) ([]Pod, error) {
	var pods []Pod
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, doc := range docSeparator.Split(string(b), -1) {
			if len(bytes.TrimSpace([]byte(doc))) == 0 {
				continue
			}
			var obj struct {
				Kind     string
				Metadata struct{ Name, Namespace, UID string }
				Spec     struct{ ServiceAccountName, NodeName string }
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if obj.Kind != "Pod" {
				continue
			}
			p := Pod{Namespace: obj.Metadata.Namespace, Name: obj.Metadata.Name, UID: obj.Metadata.UID,
				ServiceAccount: obj.Spec.ServiceAccountName, Node: obj.Spec.NodeName}
			if p.Namespace == "" {
				p.Namespace = "default"
			}
			if p.ServiceAccount == "" {
				p.ServiceAccount = "default"
			}
			pods = append(pods, p)
		}
		return nil
	})
	return pods, err
}

// FindPod returns the pod with key "<namespace>/<name>".
func FindPod(pods []Pod, key string) (Pod, error) {
	for _, p := range pods {
		if p.Key() == key {
			return p, nil
		}
	}
	return Pod{}, fmt.Errorf("pod %s not in the manifests", key)
}

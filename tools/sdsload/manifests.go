// Package sdsload puts SDS load on a node agent the way a node full of sidecars does: many
// StreamSecrets streams over the agent's Unix socket, each asking for "default" and "ROOTCA".
// It measures what issue 3 asks of the agent: how long a trust-bundle change takes to reach
// every stream, what a stream costs in agent memory, and how a node full of new pods is served.
// tools/cmd/sdsload and the e2e benchmarks both drive it.
package sdsload

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"

	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// Namespace holds every generated pod and service account.
const Namespace = "load"

// WriteManifests writes a manifests directory for mcp-sync with pods pods on node, spread
// round-robin over serviceAccounts service accounts (one identity each), and returns the pods.
func WriteManifests(dir, node string, pods, serviceAccounts int) ([]stack.Pod, error) {
	if pods < 1 || serviceAccounts < 1 || serviceAccounts > pods {
		return nil, fmt.Errorf("want 1 <= service accounts (%d) <= pods (%d)", serviceAccounts, pods)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, "load.yaml"))
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  uid: 00000000-0000-4000-8000-000000000000\n", Namespace)
	for i := range serviceAccounts {
		fmt.Fprintf(w, "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa-%d\n  namespace: %s\n  uid: 00000000-0000-4000-8001-%012d\n",
			i, Namespace, i)
	}
	out := make([]stack.Pod, 0, pods)
	for i := range pods {
		p := stack.Pod{Namespace: Namespace, Name: fmt.Sprintf("pod-%d", i), UID: fmt.Sprintf("00000000-0000-4000-8002-%012d", i),
			ServiceAccount: fmt.Sprintf("sa-%d", i%serviceAccounts), Node: node}
		fmt.Fprintf(w, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  uid: %s\n  labels:\n    app: %s\n"+
			"spec:\n  serviceAccountName: %s\n  nodeName: %s\n  containers:\n    - name: app\n      image: registry.example/load:1.0\n"+
			"status:\n  podIP: 10.%d.%d.%d\n",
			p.Name, p.Namespace, p.UID, p.ServiceAccount, p.ServiceAccount, node, 100+i>>16, (i>>8)&255, i&255)
		out = append(out, p)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	return out, f.Close()
}

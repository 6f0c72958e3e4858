package stack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// Node attestation in the stack (Options.AttestedAgents): node agents get their control-plane
// certificate from citadel's attest service with a token, as in a cluster, instead of from files.
const (
	// AttestAudience is the audience of the agents' attestation tokens (citadel's default).
	AttestAudience = "portcullis-nodeagent"
	// AgentNamespace and AgentServiceAccount are where the agents' pods run: the stack adds
	// them to mcp-sync's manifests, one pod per node, as a DaemonSet would.
	AgentNamespace      = "portcullis"
	AgentServiceAccount = "portcullis-nodeagent"
	attestTokenTTL      = 24 * time.Hour
)

// AgentPod is the node agent's pod on node, as the stack adds it to the manifests.
func AgentPod(node string) Pod {
	return Pod{Namespace: AgentNamespace, Name: "nodeagent-" + node, UID: "uid-nodeagent-" + node,
		ServiceAccount: AgentServiceAccount, Node: node}
}

// writeAgentManifests adds the agents' namespace, ServiceAccount and pods to mcp-sync's
// manifests, so that citadel finds each agent's pod on its node.
func (s *Stack) writeAgentManifests() error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by tools/stack for attested node agents.\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  uid: uid-ns-%s\n", AgentNamespace, AgentNamespace)
	fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: %s\n  namespace: %s\n  uid: uid-sa-%s\n", AgentServiceAccount, AgentNamespace, AgentServiceAccount)
	for _, node := range s.opts.Nodes {
		p := AgentPod(node)
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  uid: %s\nspec:\n  serviceAccountName: %s\n  nodeName: %s\n  containers:\n    - name: nodeagent\n      image: portcullis/nodeagent\n",
			p.Name, p.Namespace, p.UID, p.ServiceAccount, p.Node)
	}
	return os.WriteFile(filepath.Join(s.opts.Manifests, "zz-portcullis-nodeagents.yaml"), []byte(b.String()), 0o644)
}

// citadelAttestFlags serve node attestation with the stack's control-plane CA.
func (s *Stack) citadelAttestFlags() ([]string, error) {
	if !s.opts.AttestedAgents {
		return nil, nil
	}
	dir := filepath.Join(s.opts.Dir, "certs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	keyPEM, err := s.ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(dir, "control-plane-ca.crt"), filepath.Join(dir, "control-plane-ca.key")
	if err := os.WriteFile(certFile, s.ca.CertPEM(), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	return []string{"-attest-listen", "127.0.0.1:0", "-attest-ca-cert", certFile, "-attest-ca-key", keyFile,
		"-attest-service-account", AgentNamespace + "/" + AgentServiceAccount}, nil
}

// addAttestedAgent starts a node agent that has only the CA bundle and a token file.
func (s *Stack) addAttestedAgent(ctx context.Context, node string, args []string) error {
	token, err := s.AttestToken(AgentPod(node), AttestAudience, attestTokenTTL)
	if err != nil {
		return err
	}
	tokenFile := s.AttestTokenFile(node)
	if err := os.MkdirAll(filepath.Dir(tokenFile), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return err
	}
	name := agentName(node)
	args = append(args, "-attest-addr", s.AttestAddr(), "-attest-token-file", tokenFile,
		"-tls-ca", filepath.Join(s.opts.Dir, "certs", "control-plane-ca.crt"))
	args = append(args, s.opts.Extra[NodeAgent]...)
	p := newProcess(name, filepath.Join(s.opts.BinDir, NodeAgent), logPath(s.opts.Dir, name), args...)
	s.procs[name] = p
	s.order = append(s.order, name)
	return p.start(ctx, "sds", "admin")
}

// AttestTokenFile is where a node's attested agent reads its token (tests may replace it, as the
// kubelet refreshes a projected token).
func (s *Stack) AttestTokenFile(node string) string {
	return filepath.Join(s.opts.Dir, "nodes", node, "attest-token")
}

// AttestAddr is citadel's node attestation address (with Options.AttestedAgents).
func (s *Stack) AttestAddr() string { return s.procs[Citadel].Addr("attest") }

// AttestToken mints a projected service-account token for pod with the node claim, as a
// Kubernetes 1.32 API server would for a pod scheduled on pod.Node.
func (s *Stack) AttestToken(pod Pod, audience string, ttl time.Duration) (string, error) {
	return s.issuer.Issue(workloadtoken.Workload{
		Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount, PodName: pod.Name, PodUID: pod.UID,
		NodeName: pod.Node, NodeUID: "uid-node-" + pod.Node,
	}, []string{audience}, ttl)
}

// NodeAgentID is the SPIFFE ID of a node's agent.
func (s *Stack) NodeAgentID(node string) spiffeid.ID {
	id, _ := servicetls.NodeAgentID(s.td, node)
	return id
}

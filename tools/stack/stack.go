package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
)

// Service binary names, as built into Options.BinDir.
const (
	KMSAdapter = "kms-adapter"
	MCPSync    = "mcp-sync"
	Citadel    = "citadel"
	NodeAgent  = "nodeagent"
	NATS       = "natsd"
)

// Dev-stack token settings.
const (
	TokenIssuer   = "https://portcullis.dev/devstack"
	TokenAudience = "portcullis"
)

// Options configures a stack.
type Options struct {
	BinDir      string   // holds kms-adapter, mcp-sync, citadel and nodeagent
	Dir         string   // state, certificates, sockets and logs
	Manifests   string   // mcp-sync's manifests directory
	Nodes       []string // one node agent per node
	TrustDomain string   // default cluster.local
	// Extra flags per service binary name, appended to the defaults.
	Extra map[string][]string
	// ExternalNATS runs the event bus as a process of its own (natsd) instead of inside
	// kms-adapter, so that tests can stop NATS while kms-adapter keeps running.
	ExternalNATS bool
	// AttestedAgents starts node agents with only a token and the CA bundle: they obtain their
	// certificates from citadel's node attestation (see attest.go).
	AttestedAgents bool
	// AgentState gives each node agent a -state-dir of its own (nodes/<node>/state), so that it
	// keeps its workloads' certificates across restarts.
	AgentState bool
	// WorkloadAttestation is the agents' -workload-attestation; default "token": the processes a
	// stack starts run in no pod cgroup unless a test puts them in one.
	WorkloadAttestation string
}

func (o Options) workloadAttestation() string {
	if o.WorkloadAttestation == "" {
		return "token"
	}
	return o.WorkloadAttestation
}

// Stack is a running Portcullis.
type Stack struct {
	opts   Options
	td     spiffeid.TrustDomain
	ca     *servicetls.BootstrapCA
	issuer *workloadtoken.Issuer
	jwks   string
	nats   []string            // flags that point a service at the event bus
	procs  map[string]*Process // by name: kms-adapter, mcp-sync, citadel, nodeagent-<node>
	order  []string
}

// Start bootstraps credentials and starts every service, in dependency order.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "logs"), 0o700); err != nil {
		return nil, err
	}
	s := &Stack{opts: opts, td: td, procs: map[string]*Process{}}
	if err := s.bootstrap(); err != nil {
		return nil, err
	}
	if err := s.startAll(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// bootstrap makes the control-plane CA, every service's certificate and the token issuer.
func (s *Stack) bootstrap() error {
	ca, err := servicetls.NewBootstrapCA(s.td, 30*24*time.Hour)
	if err != nil {
		return err
	}
	s.ca = ca
	if s.issuer, err = workloadtoken.NewIssuer(TokenIssuer, nil); err != nil {
		return err
	}
	b, err := json.Marshal(s.issuer.KeySet())
	if err != nil {
		return err
	}
	s.jwks = filepath.Join(s.opts.Dir, "jwks.json")
	return os.WriteFile(s.jwks, b, 0o644)
}

func (s *Stack) certs(name string, id spiffeid.ID) ([]string, error) {
	f, err := s.ca.Issue(filepath.Join(s.opts.Dir, "certs"), name, id, 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	return []string{"-tls-cert", f.CertFile, "-tls-key", f.KeyFile, "-tls-ca", f.CAFile}, nil
}

func (s *Stack) add(ctx context.Context, name, bin string, id spiffeid.ID, want []string, args ...string) error {
	tls, err := s.certs(name, id)
	if err != nil {
		return err
	}
	args = append(append(args, tls...), s.opts.Extra[bin]...)
	p := newProcess(name, filepath.Join(s.opts.BinDir, bin), logPath(s.opts.Dir, name), args...)
	s.procs[name] = p
	s.order = append(s.order, name)
	return p.start(ctx, want...)
}

func (s *Stack) startAll(ctx context.Context) error {
	id := func(svc string) spiffeid.ID { return spiffeid.RequireFromSegments(s.td, "portcullis", svc) }
	grpcAdmin := []string{"grpc", "admin"}
	kmsArgs := []string{"-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0",
		"-backend", "local", "-state-dir", filepath.Join(s.opts.Dir, "kms")}
	if s.opts.ExternalNATS {
		if err := s.add(ctx, NATS, NATS, id(servicetls.NATS), []string{"nats"},
			"-listen", "127.0.0.1:0", "-store-dir", filepath.Join(s.opts.Dir, "nats")); err != nil {
			return err
		}
		s.nats = []string{"-nats-url", "tls://" + s.procs[NATS].Addr("nats"), "-nats-server-id", id(servicetls.NATS).String()}
		if err := s.add(ctx, KMSAdapter, KMSAdapter, id(servicetls.KMSAdapter), grpcAdmin, append(kmsArgs, s.nats...)...); err != nil {
			return err
		}
	} else {
		if err := s.add(ctx, KMSAdapter, KMSAdapter, id(servicetls.KMSAdapter), append(grpcAdmin, "nats"),
			append(kmsArgs, "-nats-listen", "127.0.0.1:0", "-nats-store-dir", filepath.Join(s.opts.Dir, "nats"))...); err != nil {
			return err
		}
		s.nats = []string{"-nats-url", "tls://" + s.procs[KMSAdapter].Addr("nats")}
	}
	if s.opts.AttestedAgents {
		if err := s.writeAgentManifests(); err != nil {
			return err
		}
	}
	attestFlags, err := s.citadelAttestFlags()
	if err != nil {
		return err
	}
	if err := s.add(ctx, MCPSync, MCPSync, id(servicetls.MCPSync), grpcAdmin,
		"-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0",
		"-source", "file", "-manifests-dir", s.opts.Manifests); err != nil {
		return err
	}
	citadelWant := grpcAdmin
	if s.opts.AttestedAgents {
		citadelWant = append(citadelWant, "attest")
	}
	if err := s.add(ctx, Citadel, Citadel, id(servicetls.Citadel), citadelWant,
		append([]string{"-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0",
			"-kms-addr", s.Addr(KMSAdapter), "-mcp-addr", s.Addr(MCPSync)}, append(append(s.tokenFlags(), s.nats...), attestFlags...)...)...); err != nil {
		return err
	}
	for _, node := range s.opts.Nodes {
		if err := s.addAgent(ctx, node); err != nil {
			return err
		}
	}
	return nil
}

func (s *Stack) addAgent(ctx context.Context, node string) error {
	nodeID, err := servicetls.NodeAgentID(s.td, node)
	if err != nil {
		return err
	}
	args := append([]string{"-node-name", node, "-socket", s.Socket(node), "-admin-listen", "127.0.0.1:0",
		"-citadel-addr", s.Addr(Citadel), "-mcp-addr", s.Addr(MCPSync),
		// Seconds, not the production minutes: a demo or a test watches a rotation happen.
		"-rotate-jitter", "2s", "-workload-attestation", s.opts.workloadAttestation()}, append(s.tokenFlags(), s.nats...)...)
	if s.opts.AgentState {
		args = append(args, "-state-dir", filepath.Join(s.opts.Dir, "nodes", node, "state"))
	}
	if s.opts.AttestedAgents {
		return s.addAttestedAgent(ctx, node, args)
	}
	return s.add(ctx, agentName(node), NodeAgent, nodeID, []string{"sds", "admin"}, args...)
}

func (s *Stack) tokenFlags() []string {
	return []string{"-token-issuer", TokenIssuer, "-token-audience", TokenAudience, "-token-jwks-file", s.jwks}
}

func agentName(node string) string { return NodeAgent + "-" + node }

// Socket is the SDS socket path of a node's agent.
func (s *Stack) Socket(node string) string { return filepath.Join(s.opts.Dir, "nodes", node, "socket") }

// Addr is the gRPC address of a singleton service.
func (s *Stack) Addr(name string) string { return s.procs[name].Addr("grpc") }

// Process returns a service process by name: kms-adapter, mcp-sync, citadel or nodeagent-<node>.
func (s *Stack) Process(name string) *Process { return s.procs[name] }

// Agent returns a node's agent process.
func (s *Stack) Agent(node string) *Process { return s.procs[agentName(node)] }

// Restart stops a service cleanly and starts it again with the same flags and the same
// addresses, so that its peers find it where it was.
func (s *Stack) Restart(ctx context.Context, name string) error {
	p := s.procs[name]
	if err := p.Stop(); err != nil {
		return err
	}
	return s.Resume(ctx, name)
}

// Resume starts a stopped or killed service again on the addresses it had.
func (s *Stack) Resume(ctx context.Context, name string) error { return s.resume(ctx, name, nil) }

// ResumeWaitingFor is Resume, but waits only for the given listeners (e.g. the "admin" of an
// agent that cannot attest yet, and so opens no SDS socket).
func (s *Stack) ResumeWaitingFor(ctx context.Context, name string, listeners ...string) error {
	return s.resume(ctx, name, listeners)
}

func (s *Stack) resume(ctx context.Context, name string, only []string) error {
	p := s.procs[name]
	args := append([]string(nil), p.args...)
	var want []string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-listen":
			name := "grpc"
			if p.Addr(name) == "" {
				name = "nats" // natsd
			}
			args[i+1], want = p.Addr(name), append(want, name)
		case "-admin-listen":
			args[i+1], want = p.Addr("admin"), append(want, "admin")
		case "-nats-listen":
			args[i+1], want = p.Addr("nats"), append(want, "nats")
		case "-attest-listen":
			args[i+1], want = p.Addr("attest"), append(want, "attest")
		case "-socket":
			want = append(want, "sds")
		}
	}
	p.args = args
	if only != nil {
		want = only
	}
	return p.start(ctx, want...)
}

// Token mints a workload token for a pod, as the API server's TokenRequest would.
func (s *Stack) Token(pod Pod, ttl time.Duration) (string, error) {
	return s.issuer.Issue(workloadtoken.Workload{
		Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount, PodName: pod.Name, PodUID: pod.UID,
	}, []string{TokenAudience}, ttl)
}

// CA is the control-plane bootstrap CA (tests use it to mint rogue or extra identities).
func (s *Stack) CA() *servicetls.BootstrapCA { return s.ca }

// TrustDomain is the stack's trust domain.
func (s *Stack) TrustDomain() spiffeid.TrustDomain { return s.td }

// Dir is the stack's state directory.
func (s *Stack) Dir() string { return s.opts.Dir }

// Stop stops every service in reverse order and reports unclean exits.
func (s *Stack) Stop() error {
	var errs []error
	for i := len(s.order) - 1; i >= 0; i-- {
		errs = append(errs, s.procs[s.order[i]].Stop())
	}
	return errors.Join(errs...)
}

// Describe lists the services and their addresses.
func (s *Stack) Describe() string {
	out := ""
	for _, n := range s.order {
		p := s.procs[n]
		addr := p.Addr("grpc")
		if addr == "" {
			addr = p.Addr("sds")
		}
		out += fmt.Sprintf("  %-18s %-40s admin http://%s\n", n, addr, p.Addr("admin"))
	}
	return out
}

// Identity issues a fresh control-plane identity (e.g. a node agent's) for a test client.
func (s *Stack) Identity(name string, id spiffeid.ID) (*servicetls.Identity, error) {
	f, err := s.ca.Issue(filepath.Join(s.opts.Dir, "certs"), name, id, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	return servicetls.Load(f)
}

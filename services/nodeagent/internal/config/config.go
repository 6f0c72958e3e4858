// Package config is the node agent's configuration: flags (or PORTCULLIS_* environment) and
// their validation.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/keysecrets"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// DefaultSocket is Istio's workload SDS socket path.
const DefaultSocket = "./var/run/secrets/workload-spiffe-uds/socket"

// Defaults of the SDS socket's limits (see package sdslimits). They fit the benchmarked load of
// docs/benchmarks.md with room: 10,000 streams on one agent as 100 pods x 100 streams over 100
// connections of 100 streams, opened 200 at a time, and 1,000 new pods each on a connection of
// its own asking at once (at most 1,000 streams waiting for their first request).
const (
	// Envoy and MOSN send their first request as soon as a stream opens.
	DefaultSDSFirstRequestTimeout = 10 * time.Second
	// An idle stream costs ~15 KiB, so 4,096 of them cost ~60 MiB at most, for 10s each.
	DefaultSDSMaxUnauthenticated = 4096
	DefaultSDSMaxStreamsPerConn  = 1000
	// A sidecar opens a few streams; 1,000 bounds one pod to ~15 MiB of the agent.
	DefaultSDSMaxStreamsPerCaller = 1000
)

// Config is everything the agent needs to start.
type Config struct {
	NodeName      string
	Socket        string
	SocketMode    string
	SDS           SDSLimits
	CitadelAddr   string
	MCPAddr       string
	AdminListen   string
	TokenIssuer   string
	TokenAudience string
	TokenKeys     workloadtoken.KeySource
	CertTTL       time.Duration
	KeyType       string
	RenewJitter   float64
	BundleRefresh time.Duration
	TLS           servicetls.Files
	NATS          events.ConnConfig
	BundleJitter  time.Duration
	RotateJitter  time.Duration
	Attest        Attest
	// CSI makes the agent a CSI driver of per-pod sockets (package csi).
	CSI CSI
	// WorkloadAttestation is how callers on the shared socket are identified (identity.Mode).
	WorkloadAttestation string
	// ProcRoot is where the host's /proc is (peer credentials resolve pids there).
	ProcRoot string
	// CgroupRoot is the kubelet's --cgroup-root: pod cgroups are found only under it.
	CgroupRoot string
	// State keeps certificates and keys across restarts (package secretstore).
	State State
	// WorkloadAPI configures the SPIFFE Workload API (package workloadapi).
	WorkloadAPI WorkloadAPI
	// KeySecretMaxBytes bounds the data of one KeySecret the agent serves (keysecrets.DefaultMaxBytes).
	KeySecretMaxBytes int
}

// WorkloadAPI configures the SPIFFE Workload API, served on the SDS socket, and its HTTP form.
type WorkloadAPI struct {
	// HTTPSocket is the HTTP/JSON API's Unix socket; "" puts it next to the SDS socket
	// (HTTPSocketPath), "-" turns it off.
	HTTPSocket string
	// AttributesFile maps SPIFFE IDs to attributes (workloadapi.AttributesConfig); "" is the
	// default layout with no labels.
	AttributesFile string
}

// HTTPSocketName is the HTTP API socket's file name in the SDS socket's directory.
const HTTPSocketName = "http.sock"

// HTTPSocketPath is where the HTTP API listens, "" for nowhere.
func (c *Config) HTTPSocketPath() string {
	switch c.WorkloadAPI.HTTPSocket {
	case "-":
		return ""
	case "":
		return filepath.Join(filepath.Dir(c.Socket), HTTPSocketName)
	}
	return c.WorkloadAPI.HTTPSocket
}

// State configures the node-local store of certificates and keys.
type State struct {
	Dir          string
	KeyFile      string
	RestoreGrace time.Duration
}

// SDSLimits bound the streams on the SDS socket (see package sdslimits).
type SDSLimits struct {
	// ResumeAfter is how long a silent stream of a caller its connection identifies is given to
	// ask before it is answered anyway (sds/resume.go); 0 disables.
	ResumeAfter         time.Duration
	FirstRequestTimeout time.Duration
	MaxUnauthenticated  int
	MaxStreamsPerConn   int
	MaxStreamsPerPod    int
}

// RegisterFlags binds the config to fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&c.Socket, "socket", DefaultSocket, "SDS Unix socket path")
	fs.StringVar(&c.SocketMode, "socket-mode", "0660", "SDS socket file mode (octal)")
	fs.StringVar(&c.CitadelAddr, "citadel-addr", "127.0.0.1:15012", "citadel gRPC address")
	fs.StringVar(&c.MCPAddr, "mcp-addr", "127.0.0.1:15010", "mcp-sync gRPC address")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:15020", "address of /metrics, /healthz and /readyz")
	fs.StringVar(&c.WorkloadAttestation, "workload-attestation", string(identity.ModeTokenPeer),
		"how callers on the shared socket are identified: token, peer (the kernel's peer credentials and the caller's pod cgroup), or token+peer (peer credentials required; a token, if sent, must name the same pod)")
	fs.StringVar(&c.ProcRoot, "proc-root", "/proc", "the host's /proc (the agent needs the host's pid namespace for peer credentials)")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", "/", "the kubelet's --cgroup-root: a caller is in a pod only if its cgroup is a pod cgroup under it")
	fs.StringVar(&c.State.Dir, "state-dir", "", "node-local directory (0700; a tmpfs) that keeps workload keys and certificates across agent restarts; empty keeps nothing")
	fs.StringVar(&c.State.KeyFile, "state-key-file", "", "file with a 32-byte key (hex, base64 or raw) that encrypts -state-dir (AES-256-GCM); empty stores plain 0600 files")
	fs.DurationVar(&c.State.RestoreGrace, "state-restore-grace", secrets.DefaultRestoreGrace, "how long a restored identity is kept and renewed before a sidecar of its pod reconnects")
	fs.StringVar(&c.TokenIssuer, "token-issuer", "", "issuer (iss) of workload tokens")
	fs.StringVar(&c.TokenAudience, "token-audience", "portcullis", "accepted token audiences, comma-separated")
	c.TokenKeys.RegisterFlags(fs)
	fs.DurationVar(&c.CertTTL, "cert-ttl", 24*time.Hour, "requested workload certificate lifetime")
	fs.StringVar(&c.KeyType, "key-type", string(secrets.ECDSAP256), "workload key type: ecdsa-p256 or rsa-2048")
	fs.Float64Var(&c.RenewJitter, "renew-jitter", secrets.DefaultJitter, "renewal jitter as a fraction of lifetime, around the half-life")
	fs.DurationVar(&c.BundleRefresh, "bundle-refresh", 30*time.Second, "trust bundle and JWT bundle poll interval (events refetch them at once)")
	fs.StringVar(&c.WorkloadAPI.HTTPSocket, "http-socket", "",
		"Unix socket of the Workload API's HTTP/JSON form (POST /v1/jwtsvid, /v1/validate), mode -socket-mode; default "+HTTPSocketName+" next to -socket; - disables")
	fs.StringVar(&c.WorkloadAPI.AttributesFile, "attributes-file", "",
		"YAML or JSON file mapping SPIFFE ID paths (and namespace labels) to the attributes ValidateJWTSVID returns; default /ns/{namespace}/sa/{serviceAccount}")
	c.TLS.RegisterFlags(fs)
	c.Attest.RegisterFlags(fs)
	c.CSI.RegisterFlags(fs)
	c.NATS.RegisterFlags(fs)
	fs.DurationVar(&c.BundleJitter, "bundle-jitter", 250*time.Millisecond, "spread of trust bundle refetches after a bundle event, so a fleet does not reach citadel at once")
	fs.DurationVar(&c.RotateJitter, "rotate-jitter", 2*time.Minute, "spread of re-issues after a CA activation or a forced rotation (revocations are acted on at once)")
	fs.IntVar(&c.KeySecretMaxBytes, "keysecret-max-bytes", keysecrets.DefaultMaxBytes,
		"largest KeySecret (sum of its data keys and values) served over SDS; a larger one is refused with FailedPrecondition")
	fs.DurationVar(&c.SDS.ResumeAfter, "sds-resume-after", 2*time.Second,
		"a stream whose connection identifies its caller (per-pod socket, peer credentials) and that asks for nothing this long is answered with what its identity asked for before, as sidecars that reconnect without asking again (MOSN) need; 0 disables")
	fs.DurationVar(&c.SDS.FirstRequestTimeout, "sds-first-request-timeout", DefaultSDSFirstRequestTimeout, "an SDS stream that sends no request this long after opening is ended")
	fs.IntVar(&c.SDS.MaxUnauthenticated, "sds-max-unauthenticated-streams", DefaultSDSMaxUnauthenticated, "most SDS streams, agent-wide, that have not sent their first request; more are refused")
	fs.IntVar(&c.SDS.MaxStreamsPerConn, "sds-max-streams-per-conn", DefaultSDSMaxStreamsPerConn, "most concurrent streams on one connection to the SDS socket")
	fs.IntVar(&c.SDS.MaxStreamsPerPod, "sds-max-streams-per-pod", DefaultSDSMaxStreamsPerCaller, "most open streams of one authenticated pod: SDS streams and Workload API watches together")
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("-node-name (or $NODE_NAME) is required"))
	}
	if c.Socket == "" {
		errs = append(errs, errors.New("-socket is required"))
	}
	if _, err := c.Mode(); err != nil {
		errs = append(errs, err)
	}
	if _, err := identity.ParseMode(c.WorkloadAttestation); err != nil {
		errs = append(errs, fmt.Errorf("-workload-attestation: %w", err))
	}
	if c.State.KeyFile != "" && c.State.Dir == "" {
		errs = append(errs, errors.New("-state-key-file needs -state-dir"))
	}
	if c.State.RestoreGrace < 0 {
		errs = append(errs, fmt.Errorf("-state-restore-grace %s must not be negative", c.State.RestoreGrace))
	}
	if !strings.HasPrefix(c.CgroupRoot, "/") {
		errs = append(errs, fmt.Errorf("-cgroup-root %q must be an absolute cgroup path", c.CgroupRoot))
	}
	if c.TokenIssuer == "" {
		errs = append(errs, errors.New("-token-issuer is required"))
	}
	errs = append(errs, c.TokenKeys.Validate())
	if len(c.Audiences()) == 0 {
		errs = append(errs, errors.New("-token-audience is required"))
	}
	if c.CertTTL < time.Minute || c.CertTTL > 90*24*time.Hour {
		errs = append(errs, fmt.Errorf("-cert-ttl %s out of range [1m, 2160h]", c.CertTTL))
	}
	if _, err := secrets.ParseKeyType(c.KeyType); err != nil {
		errs = append(errs, fmt.Errorf("-key-type: %w", err))
	}
	if c.RenewJitter <= 0 || c.RenewJitter > 0.25 {
		// Zero is refused on purpose: certificates issued together would all renew together.
		errs = append(errs, fmt.Errorf("-renew-jitter %v out of range (0, 0.25]", c.RenewJitter))
	}
	if c.BundleRefresh < time.Second {
		errs = append(errs, errors.New("-bundle-refresh must be at least 1s"))
	}
	if p := c.HTTPSocketPath(); p != "" && filepath.Clean(p) == filepath.Clean(c.Socket) {
		errs = append(errs, fmt.Errorf("-http-socket %s is the SDS socket", p))
	}
	errs = append(errs, c.validateTLS(), c.NATS.Validate(), c.CSI.Validate())
	if c.BundleJitter < 0 || c.RotateJitter < 0 {
		errs = append(errs, fmt.Errorf("-bundle-jitter (%s) and -rotate-jitter (%s) must not be negative", c.BundleJitter, c.RotateJitter))
	}
	if c.SDS.ResumeAfter < 0 || c.SDS.ResumeAfter >= c.SDS.FirstRequestTimeout {
		errs = append(errs, fmt.Errorf("-sds-resume-after (%s) must be at least 0 and shorter than -sds-first-request-timeout (%s)", c.SDS.ResumeAfter, c.SDS.FirstRequestTimeout))
	}
	if c.SDS.FirstRequestTimeout <= 0 || c.SDS.MaxUnauthenticated <= 0 || c.SDS.MaxStreamsPerConn <= 0 || c.SDS.MaxStreamsPerPod <= 0 {
		errs = append(errs, fmt.Errorf("-sds-first-request-timeout (%s), -sds-max-unauthenticated-streams (%d), -sds-max-streams-per-conn (%d) and -sds-max-streams-per-pod (%d) must be positive",
			c.SDS.FirstRequestTimeout, c.SDS.MaxUnauthenticated, c.SDS.MaxStreamsPerConn, c.SDS.MaxStreamsPerPod))
	}
	if c.KeySecretMaxBytes <= 0 || c.KeySecretMaxBytes > MaxKeySecretBytes {
		errs = append(errs, fmt.Errorf("-keysecret-max-bytes %d out of range [1, %d]", c.KeySecretMaxBytes, MaxKeySecretBytes))
	}
	return errors.Join(errs...)
}

// MaxKeySecretBytes caps -keysecret-max-bytes: mcp-sync sends a node's KeySecrets in one MCP
// message, which gRPC limits to 4 MiB by default, and an API server object to ~1.5 MiB.
const MaxKeySecretBytes = 1 << 20

// Mode is the parsed -socket-mode; only owner and group bits are allowed.
func (c *Config) Mode() (os.FileMode, error) {
	m, err := strconv.ParseUint(c.SocketMode, 8, 32)
	if err != nil || m&0o007 != 0 || m&0o600 != 0o600 {
		return 0, fmt.Errorf("-socket-mode %q: want an octal mode like 0600 or 0660, never world-accessible", c.SocketMode)
	}
	return os.FileMode(m), nil
}

// Audiences splits -token-audience.
func (c *Config) Audiences() []string { return workloadtoken.SplitAudiences(c.TokenAudience) }

// Package kubecluster runs a whole one-node Kubernetes v1.32 cluster for tests, as real processes
// on this machine: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (with
// runc), the kubelet and kube-proxy (nftables mode), on a bridge CNI network whose pods have no
// default route. Pods really run: the kubelet projects service-account tokens, hostPath volumes
// and ClusterIP Services work. There is no registry: images are OCI archives imported into
// containerd (ImportImage, BuildImage) and pods use imagePullPolicy: Never.
//
// It needs root, cgroup v1 or v2 with the cgroupfs driver, the Debian packages etcd-server,
// containerd, runc, containernetworking-plugins and nftables (`go tool task cluster:deps`) and the
// Kubernetes binary built by `go tool task kube`. A missing piece fails Start with the command
// that installs or builds it.
//
// The host is left as it was found. containerd and the kubelet run in a private mount namespace
// where /run, /var/lib and /var/log are directories of the cluster's own, so the paths they insist
// on (/var/lib/kubelet, /run/containerd, /run/netns, /var/lib/cni, /var/log/pods) never appear on
// the host, and where the kernel tunables the kubelet checks read as it wants them, so it changes
// none. What does touch the host — the bridge and its routes, kube-proxy's nftables tables, the
// kubepods cgroups — is removed by Stop, or by the next Start (or `kubecluster down`) if the
// process that started the cluster died. One cluster runs per machine at a time (the bridge, the
// cgroup and the nftables tables have fixed names); a lock file makes a second Start fail clearly.
package kubecluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/portcullis-mesh/portcullis/tools/procs"
)

// Issuer is the service-account token issuer ("iss") of the cluster's API server.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// Defaults of Options.
const (
	DefaultNodeName    = "kubecluster"
	DefaultPodCIDR     = "10.244.0.0/24"
	DefaultServiceCIDR = "10.96.0.0/16"
	DefaultBridge      = "kubecluster0"
)

// Options configures a cluster. The zero value is a usable cluster in a new temporary directory.
type Options struct {
	// Dir holds every file of the cluster: certificates, configs, logs (<component>.log), etcd's
	// data, containerd's root and state, the kubelet's root. Empty means a new temporary
	// directory that Stop removes. A given Dir is emptied by Start (it must be empty or a
	// previous cluster's, marked by a file named .kubecluster) and kept by Stop.
	Dir string
	// NodeName is the one node's name (DefaultNodeName).
	NodeName string
	// PodCIDR is the pods' network; its first address is the node's, on the bridge
	// (DefaultPodCIDR). ServiceCIDR is the Services' range (DefaultServiceCIDR); its first
	// address is the kubernetes Service's ClusterIP.
	PodCIDR, ServiceCIDR string
	// Bridge is the name of the bridge the pods are attached to (DefaultBridge).
	Bridge string
	// Images are OCI archives imported into containerd before Start returns.
	Images []string
	// LockWait is how long Start waits for another cluster on the machine to stop (0: fail at
	// once). Test packages that each run a cluster, run in parallel by `go test ./...`, take
	// turns this way.
	LockWait time.Duration
	// Locked, if set, is called once Start holds the machine's lock and before it changes
	// anything on the host: a test that compares the host before and after takes its first
	// snapshot there, while no other package's cluster can be running.
	Locked func()
	// Unlocking, if set, is called by Stop once it has cleaned up the host and before it
	// releases the lock: where such a test takes its second snapshot.
	Unlocking func()
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// Cluster is a running cluster. Its methods are safe for concurrent use.
type Cluster struct {
	opts   Options
	dir    string
	ownDir bool
	log    *slog.Logger
	net    network
	bins   binaries
	pki    *pki
	lock   *hostLock

	server     string // https://<node IP>:<port>
	etcdURL    string
	saKey      string // the service-account signing key
	kubeconfig string
	config     *rest.Config
	client     kubernetes.Interface

	hostTouched bool             // the host was found free: Stop cleans it up
	procs       []*procs.Process // in start order
	dns         *clusterDNS
	node        *procs.Process // containerd, in the node mount namespace
	stopOnce    sync.Once
	stopErr     error
}

// network is the node's addresses.
type network struct {
	bridge      string
	podCIDR     netip.Prefix
	serviceCIDR netip.Prefix
	nodeIP      netip.Addr // the bridge's address, the first of podCIDR
	firstPodIP  netip.Addr
	apiServerIP netip.Addr // the kubernetes Service's ClusterIP, the first of serviceCIDR
}

func parseNetwork(o Options) (network, error) {
	pods, err := netip.ParsePrefix(o.PodCIDR)
	if err != nil || !pods.Addr().Is4() || pods.Bits() > 28 {
		return network{}, fmt.Errorf("pod CIDR %q: want an IPv4 prefix of /28 or more addresses", o.PodCIDR)
	}
	services, err := netip.ParsePrefix(o.ServiceCIDR)
	if err != nil || !services.Addr().Is4() || services.Bits() > 28 || services.Bits() < 12 {
		return network{}, fmt.Errorf("service CIDR %q: want an IPv4 prefix from /12 to /28", o.ServiceCIDR)
	}
	pods, services = pods.Masked(), services.Masked()
	if pods.Overlaps(services) {
		return network{}, fmt.Errorf("pod CIDR %s overlaps service CIDR %s", pods, services)
	}
	if len(o.Bridge) > 15 {
		return network{}, fmt.Errorf("bridge name %q: longer than 15 bytes", o.Bridge)
	}
	node := pods.Addr().Next()
	return network{bridge: o.Bridge, podCIDR: pods, serviceCIDR: services, nodeIP: node, firstPodIP: node.Next(),
		apiServerIP: services.Addr().Next()}, nil
}

func (o *Options) setDefaults() {
	if o.NodeName == "" {
		o.NodeName = DefaultNodeName
	}
	if o.PodCIDR == "" {
		o.PodCIDR = DefaultPodCIDR
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	if o.Bridge == "" {
		o.Bridge = DefaultBridge
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Start runs a cluster and returns once its node is Ready and the default ServiceAccount exists.
// On error, everything started is stopped again. ctx bounds the start only.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	opts.setDefaults()
	n, err := parseNetwork(opts)
	if err != nil {
		return nil, err
	}
	bins, err := findBinaries()
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, dir: opts.Dir, log: opts.Logger, net: n, bins: bins}
	if c.dir == "" {
		// Short: containerd's socket path must fit in a sockaddr_un (108 bytes).
		if c.dir, err = os.MkdirTemp("", "kubecluster-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	} else if c.dir, err = filepath.Abs(c.dir); err != nil {
		return nil, err
	}
	for _, d := range shadowedDirs {
		if c.dir == d || strings.HasPrefix(c.dir, d+"/") {
			return nil, fmt.Errorf("cluster dir %s: must not be under %s, which the node's mount namespace replaces", c.dir, d)
		}
	}
	if c.lock, err = lockHost(c.log, opts.LockWait); err != nil {
		if c.ownDir {
			os.RemoveAll(c.dir)
		}
		return nil, err
	}
	if opts.Locked != nil {
		opts.Locked()
	}
	if !c.ownDir {
		if err := resetDir(c.dir); err != nil {
			c.lock.release()
			return nil, err
		}
	}
	t0 := time.Now()
	if err := c.start(ctx); err != nil {
		if c.ownDir { // Stop removes the directory: keep the logs the error points to
			if logs, lerr := os.MkdirTemp("", "kubecluster-logs-"); lerr == nil && c.SaveLogs(logs) == nil {
				err = fmt.Errorf("%w\n(the components' logs are saved in %s)", err, logs)
			}
		}
		return nil, errors.Join(err, c.Stop())
	}
	c.log.Info("cluster ready", "took", time.Since(t0).Round(time.Millisecond), "kubeconfig", c.kubeconfig)
	return c, nil
}

// Kubeconfig is the path of a cluster-admin (system:masters) kubeconfig.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Config is a copy of the cluster-admin client config.
func (c *Cluster) Config() *rest.Config { return rest.CopyConfig(c.config) }

// Client is a cluster-admin client.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Dir is the cluster's directory (logs: <component>.log).
func (c *Cluster) Dir() string { return c.dir }

// NodeName is the name of the cluster's one node.
func (c *Cluster) NodeName() string { return c.opts.NodeName }

// NodeIP is the node's address: the bridge's, reachable from the host and from pods.
func (c *Cluster) NodeIP() netip.Addr { return c.net.nodeIP }

// CAFile is the cluster CA's certificate (PEM): it signed the API server's and the kubelet's
// serving certificates and is the kube-root-ca.crt that pods see.
func (c *Cluster) CAFile() string { return c.pki.CAFile }

// ContainerdSocket is containerd's gRPC socket (for ctr --address).
func (c *Cluster) ContainerdSocket() string { return c.path("containerd", "containerd.sock") }

// NodePath is the host path at which the host sees path as the node does: /run, /var/lib and
// /var/log of the node (and so hostPath volumes under them, such as a socket directory under
// /var/run) are the cluster's own. A test on the host can dial a Unix socket a pod created there.
func (c *Cluster) NodePath(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", c.node.Pid(), filepath.Clean("/"+path))
}

func (c *Cluster) start(ctx context.Context) error {
	if err := checkHostFree(c.net.bridge); err != nil {
		return err
	}
	// Recorded before the host is touched, for a later cleanup if this process dies.
	if err := c.lock.record(hostState{Pid: os.Getpid(), Dir: c.dir, Bridge: c.net.bridge, OwnDir: c.ownDir}); err != nil {
		return err
	}
	c.hostTouched = true
	var err error
	if c.pki, err = newPKI(c.path("pki")); err != nil {
		return fmt.Errorf("cluster pki: %w", err)
	}
	if err := setupBridge(c.net); err != nil {
		return err
	}
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"etcd", c.startEtcd},
		{"kube-apiserver", c.startAPIServer},
		{"cluster dns", c.startDNS},
		{"storage", c.createStorage},
		{"kube-controller-manager", c.startControllerManager},
		{"kube-scheduler", c.startScheduler},
		{"containerd", c.startContainerd},
		{"images", c.importImages},
		{"kubelet", c.startKubelet},
		{"kube-proxy", c.startKubeProxy},
		{"node ready", c.waitNodeReady},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		c.log.Info("started", "step", s.name, "took", time.Since(t).Round(time.Millisecond))
	}
	return nil
}

// waitNodeReady waits for the node's Ready condition and for the default ServiceAccount, which
// pods of the default namespace need and the controller manager creates.
func (c *Cluster) waitNodeReady(ctx context.Context) error {
	kubelet := c.procs[len(c.procs)-2]
	return kubelet.WaitContext(ctx, func(ctx context.Context) error {
		node, err := c.client.CoreV1().Nodes().Get(ctx, c.opts.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status != corev1.ConditionTrue {
					return fmt.Errorf("node %s not ready: %s", node.Name, cond.Message)
				}
				ready = true
			}
		}
		if !ready {
			return fmt.Errorf("node %s has no Ready condition yet", node.Name)
		}
		if _, err := c.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			if apierrors.IsNotFound(err) {
				return errors.New("no default service account yet")
			}
			return err
		}
		return nil
	})
}

func (c *Cluster) loadClient() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	c.config, c.client = cfg, client
	return nil
}

func (c *Cluster) apiServerURL(port int) string {
	return "https://" + net.JoinHostPort(c.net.nodeIP.String(), fmt.Sprint(port))
}

// dirMarker marks a directory as a cluster's, which Start may empty.
const dirMarker = ".kubecluster"

// resetDir empties dir if it is a previous cluster's, or makes it.
func resetDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	if len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(dir, dirMarker)); err != nil {
			return fmt.Errorf("cluster dir %s is not empty and not a cluster's (no %s): refusing to empty it", dir, dirMarker)
		}
		for _, e := range entries {
			if err := removeAllRetry(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, dirMarker), nil, 0o644)
}

func (c *Cluster) startDNS(context.Context) error {
	d, err := startDNS(c.client, c.net.nodeIP, c.log)
	if err != nil {
		return err
	}
	c.dns = d
	return nil
}

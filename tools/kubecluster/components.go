package kubecluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/procs"
)

// Each start* method starts one component and waits until it serves.

func (c *Cluster) run(name, bin string, args ...string) (*procs.Process, error) {
	p := &procs.Process{Name: name, Bin: bin, Args: args, Log: c.path(name + ".log")}
	if err := p.Start(); err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// kube runs one component of the all-in-one Kubernetes binary.
func (c *Cluster) kube(component string, args ...string) (*procs.Process, error) {
	return c.run(component, c.bins.kube, append([]string{component}, args...)...)
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	ports, err := procs.FreePorts(2)
	if err != nil {
		return err
	}
	client, peer := "http://"+procs.HostPort(ports[0]), "http://"+procs.HostPort(ports[1])
	p, err := c.run("etcd", c.bins.etcd,
		"--name", "kubecluster", "--data-dir", c.path("etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "kubecluster="+peer)
	if err != nil {
		return err
	}
	c.etcdURL = client
	return p.WaitContext(ctx, func(ctx context.Context) error { return httpGet(ctx, client+"/health", nil) })
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	n := c.net
	serving, err := c.pki.issue(certRequest{Name: "apiserver", CN: "kube-apiserver", Server: true,
		IPs: []net.IP{n.nodeIP.AsSlice(), n.apiServerIP.AsSlice(), net.IPv4(127, 0, 0, 1)},
		DNS: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}})
	if err != nil {
		return err
	}
	kubeletClient, err := c.pki.issue(certRequest{Name: "apiserver-kubelet-client", CN: "kube-apiserver-kubelet-client",
		Groups: []string{"system:masters"}, Client: true})
	if err != nil {
		return err
	}
	saKey, saPub, err := c.pki.serviceAccountKey()
	if err != nil {
		return err
	}
	c.saKey = saKey
	ports, err := procs.FreePorts(1)
	if err != nil {
		return err
	}
	c.server = c.apiServerURL(ports[0])
	admin, err := c.pki.issue(certRequest{Name: "admin", CN: "kubernetes-admin", Groups: []string{"system:masters"}, Client: true})
	if err != nil {
		return err
	}
	c.kubeconfig = c.path("admin.kubeconfig")
	if err := c.pki.kubeconfig(c.kubeconfig, c.server, "kubernetes-admin", admin); err != nil {
		return err
	}
	if err := c.loadClient(); err != nil {
		return err
	}
	// It listens on the node's address only (the bridge): the host and the pods reach it, no
	// other machine does. --kubelet-preferred-address-types: else it dials the node by hostname.
	p, err := c.kube("kube-apiserver",
		"--etcd-servers="+c.etcdURL,
		"--bind-address="+n.nodeIP.String(), "--advertise-address="+n.nodeIP.String(),
		fmt.Sprintf("--secure-port=%d", ports[0]),
		"--tls-cert-file="+serving.Cert, "--tls-private-key-file="+serving.Key,
		"--client-ca-file="+c.pki.CAFile,
		"--service-account-issuer="+Issuer,
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range="+n.serviceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-preferred-address-types=InternalIP",
		"--kubelet-certificate-authority="+c.pki.CAFile,
		"--kubelet-client-certificate="+kubeletClient.Cert, "--kubelet-client-key="+kubeletClient.Key,
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	return p.WaitContext(ctx, func(ctx context.Context) error {
		_, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	})
}

// componentKubeconfig issues a client certificate for user and writes its kubeconfig.
func (c *Cluster) componentKubeconfig(name, user string, groups ...string) (string, error) {
	cert, err := c.pki.issue(certRequest{Name: name, CN: user, Groups: groups, Client: true})
	if err != nil {
		return "", err
	}
	path := c.path(name + ".kubeconfig")
	return path, c.pki.kubeconfig(path, c.server, user, cert)
}

func (c *Cluster) startControllerManager(ctx context.Context) error {
	kubeconfig, err := c.componentKubeconfig("kube-controller-manager", "system:kube-controller-manager")
	if err != nil {
		return err
	}
	ports, err := procs.FreePorts(1)
	if err != nil {
		return err
	}
	// --root-ca-file: the kube-root-ca.crt every pod sees, so in-pod clients verify the API
	// server. --use-service-account-credentials: each controller as its own service account.
	p, err := c.kube("kube-controller-manager",
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig, "--authorization-kubeconfig="+kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[0]), "--cert-dir="+c.path("kube-controller-manager"),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--root-ca-file="+c.pki.CAFile,
		"--service-account-private-key-file="+c.saKey,
		"--cluster-signing-cert-file="+c.pki.CAFile, "--cluster-signing-key-file="+c.pki.caKeyFile(),
		"--service-cluster-ip-range="+c.net.serviceCIDR.String(),
		// Its default, /usr/libexec/kubernetes/kubelet-plugins/volume/exec, would be created
		// on the host.
		"--flex-volume-plugin-dir="+c.path("kubelet-plugins"),
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	return p.WaitContext(ctx, func(ctx context.Context) error { return httpsHealthz(ctx, ports[0]) })
}

func (c *Cluster) startScheduler(ctx context.Context) error {
	kubeconfig, err := c.componentKubeconfig("kube-scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	ports, err := procs.FreePorts(1)
	if err != nil {
		return err
	}
	p, err := c.kube("kube-scheduler",
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig, "--authorization-kubeconfig="+kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[0]),
		"--leader-elect=false",
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	return p.WaitContext(ctx, func(ctx context.Context) error { return httpsHealthz(ctx, ports[0]) })
}

// startContainerd starts the node's mount namespace: sh, in a new private mount namespace, makes
// the bind mounts (see nodeScript) and execs containerd.
func (c *Cluster) startContainerd(ctx context.Context) error {
	for _, d := range []string{c.path("containerd"), c.path("cni", "ipam"), c.path("kubelet-plugins")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, d := range shadowedDirs {
		if err := os.MkdirAll(c.nodeDir(d), 0o755); err != nil {
			return err
		}
	}
	if err := writeContainerdConfig(c); err != nil {
		return err
	}
	if err := writeCNIConfig(c); err != nil {
		return err
	}
	tunables, err := kubeletTunables(c.path("node", "sysctl"))
	if err != nil {
		return err
	}
	p := &procs.Process{Name: "containerd", Bin: c.bins.sh, Args: []string{"-c", nodeScript(c, tunables, c.bins.containerd)},
		Log: c.path("containerd.log"), Unshareflags: syscall.CLONE_NEWNS,
		// The shims containerd starts find runc on PATH. mount(8) would otherwise create
		// /run/mount (its utab) on the host's /run before the node's /run is mounted over it.
		Env: append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"LIBMOUNT_UTAB="+c.path("node", "utab"))}
	if err := p.Start(); err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	c.node = p
	return p.WaitContext(ctx, func(ctx context.Context) error {
		return runQuiet(ctx, c.bins.ctr, "--address", c.ContainerdSocket(), "version")
	})
}

// inNode runs a component of the Kubernetes binary in the node's mount namespace (nsenter
// execs it: the same process, so it still dies with ours).
func (c *Cluster) inNode(component string, args ...string) (*procs.Process, error) {
	return c.run(component, c.bins.nsenter, append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", c.node.Pid()), "--",
		c.bins.kube, component}, args...)...)
}

// startKubelet runs the kubelet in the node's mount namespace.
func (c *Cluster) startKubelet(ctx context.Context) error {
	n := c.net
	kubeconfig, err := c.componentKubeconfig("kubelet", "system:node:"+c.opts.NodeName, "system:nodes")
	if err != nil {
		return err
	}
	serving, err := c.pki.issue(certRequest{Name: "kubelet-serving", CN: c.opts.NodeName, Server: true,
		IPs: []net.IP{n.nodeIP.AsSlice()}, DNS: []string{c.opts.NodeName}})
	if err != nil {
		return err
	}
	ports, err := procs.FreePorts(2)
	if err != nil {
		return err
	}
	if err := writeKubeletConfig(c, serving, ports[0], ports[1]); err != nil {
		return err
	}
	p, err := c.inNode("kubelet",
		"--config="+c.path("kubelet.yaml"), "--kubeconfig="+kubeconfig,
		"--hostname-override="+c.opts.NodeName, "--node-ip="+n.nodeIP.String())
	if err != nil {
		return err
	}
	healthz := "http://" + procs.HostPort(ports[1]) + "/healthz"
	return p.WaitContext(ctx, func(ctx context.Context) error { return httpGet(ctx, healthz, nil) })
}

func (c *Cluster) startKubeProxy(ctx context.Context) error {
	kubeconfig, err := c.componentKubeconfig("kube-proxy", "system:kube-proxy")
	if err != nil {
		return err
	}
	ports, err := procs.FreePorts(2)
	if err != nil {
		return err
	}
	if err := writeKubeProxyConfig(c, kubeconfig, ports[0], ports[1]); err != nil {
		return err
	}
	// In the node's mount namespace too: its start-up cleanup of iptables-mode rules runs
	// iptables, which would leave /run/xtables.lock on the host.
	p, err := c.inNode("kube-proxy", "--config="+c.path("kube-proxy.yaml"))
	if err != nil {
		return err
	}
	healthz := "http://" + procs.HostPort(ports[0]) + "/healthz"
	return p.WaitContext(ctx, func(ctx context.Context) error { return httpGet(ctx, healthz, nil) })
}

// httpsHealthz checks a control-plane component's /healthz on its loopback port. Its serving
// certificate is self-signed and unknown here; this is a readiness probe on loopback only.
func httpsHealthz(ctx context.Context, port int) error {
	return httpGet(ctx, "https://"+procs.HostPort(port)+"/healthz", &tls.Config{InsecureSkipVerify: true})
}

func httpGet(ctx context.Context, url string, tlsConfig *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func pathsExist(paths ...string) error {
	var missing []string
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, filepath.Clean(p))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return nil
}

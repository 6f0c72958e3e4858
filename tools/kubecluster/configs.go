package kubecluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The configuration files of containerd, the kubelet, kube-proxy and the CNI. Every path they name
// is under the cluster's directory, or under /run, /var/lib and /var/log as seen from the node's
// private mount namespace, where those are bind mounts of directories under the cluster's
// directory too (see node.go).

func writeContainerdConfig(c *Cluster) error {
	// disable_apparmor and restrict_oom_score_adj: this kind of VM has no AppArmor and lacks
	// CAP_SYS_RESOURCE; without restrict_oom_score_adj every sandbox fails with "runc create
	// failed: ... can't get final child's PID from pipe: EOF". The stream server (exec, logs)
	// listens on a loopback ephemeral port. The opt plugin's default path is /opt/containerd.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, c.path("containerd", "root"), c.path("containerd", "state"), c.ContainerdSocket(), c.ContainerdSocket()+".ttrpc",
		c.path("containerd", "opt"), PauseImage, cniBinDir, c.path("cni", "net.d"))
	return os.WriteFile(c.path("containerd", "config.toml"), []byte(config), 0o644)
}

// writeCNIConfig writes the bridge network: host-local addresses from the pod range, no IP
// masquerade and no default route, so a pod reaches only other pods, the node (the bridge's
// address) and the Service range, which is routed to the bridge's address where kube-proxy's
// nftables rules translate it. The harness creates the bridge itself (with its address), so the
// plugin's isGateway (which would also turn on net.ipv4.ip_forward for the whole host) stays off.
func writeCNIConfig(c *Cluster) error {
	n := c.net
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "kubecluster",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      n.bridge,
			"isGateway":   false,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"dataDir": c.path("cni", "ipam"),
				"ranges": [][]map[string]string{{{
					"subnet":     n.podCIDR.String(),
					"rangeStart": n.firstPodIP.String(),
					"gateway":    n.nodeIP.String(),
				}}},
				"routes": []map[string]string{{"dst": n.serviceCIDR.String(), "gw": n.nodeIP.String()}},
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.path("cni", "net.d"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(c.path("cni", "net.d", "10-kubecluster.conflist"), b, 0o644)
}

// writeKubeletConfig: the kubelet runs in the node's mount namespace, with /var/lib/kubelet there.
func writeKubeletConfig(c *Cluster, serving certFiles, port, healthzPort int) error {
	// oomScoreAdj 0: no CAP_SYS_RESOURCE here. protectKernelDefaults: the kubelet only checks
	// its kernel tunables instead of writing them (the node namespace shows it the values it
	// wants, see node.go). makeIPTablesUtilChains false: no iptables rules on the host. Image
	// GC off: the images were imported, nothing can pull them again. Eviction thresholds low: a
	// busy shared disk must not evict the test's pods. resolvConf "": pods get no host
	// nameserver, only the cluster's (dns.go), which answers cluster names only.
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
protectKernelDefaults: true
makeIPTablesUtilChains: false
resolvConf: ""
clusterDomain: %s
clusterDNS: [%s]
volumePluginDir: %s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
`, c.net.nodeIP, port, healthzPort, serving.Cert, serving.Key, c.pki.CAFile, c.ContainerdSocket(), ClusterDomain, c.net.nodeIP,
		c.path("kubelet-plugins"))
	return os.WriteFile(c.path("kubelet.yaml"), []byte(config), 0o644)
}

func writeKubeProxyConfig(c *Cluster, kubeconfig string, healthzPort, metricsPort int) error {
	// conntrack all zeros: leave the host's conntrack sysctls alone. NodePorts only on the node's
	// address (the bridge), never on the host's other interfaces.
	config := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:%d
clusterCIDR: %s
nodePortAddresses: [primary]
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`, kubeconfig, c.opts.NodeName, healthzPort, metricsPort, c.net.podCIDR)
	return os.WriteFile(c.path("kube-proxy.yaml"), []byte(config), 0o644)
}

// nodeScript is run by sh in the node's new (private) mount namespace: it bind-mounts the
// cluster's own directories over /run, /var/lib and /var/log, the kernel tunables the kubelet
// checks over their /proc/sys files, then becomes containerd. The kubelet joins this namespace.
func nodeScript(c *Cluster, tunables map[string]string, containerd string) string {
	var b strings.Builder
	b.WriteString("set -eu\n")
	for _, d := range shadowedDirs {
		fmt.Fprintf(&b, "mount --bind %s %s\n", shellQuote(c.nodeDir(d)), d)
	}
	// mountPropagation Bidirectional (CSI node plugins) needs /var/lib/kubelet to be shared:
	// shared within this namespace and the containers cloned from it, not with the host.
	fmt.Fprintf(&b, "mkdir -p /var/lib/kubelet\nmount --bind /var/lib/kubelet /var/lib/kubelet\nmount --make-rshared /var/lib/kubelet\n")
	for _, name := range sortedKeys(tunables) {
		fmt.Fprintf(&b, "mount --bind %s %s\n", shellQuote(tunables[name]), "/proc/sys/"+strings.ReplaceAll(name, ".", "/"))
	}
	fmt.Fprintf(&b, "exec %s --config %s\n", shellQuote(containerd), shellQuote(c.path("containerd", "config.toml")))
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// path is a file under the cluster's directory.
func (c *Cluster) path(elem ...string) string {
	return filepath.Join(append([]string{c.dir}, elem...)...)
}

// nodeDir is the directory under the cluster's directory that the node namespace sees at dir.
func (c *Cluster) nodeDir(dir string) string {
	return c.path("node", strings.ReplaceAll(strings.Trim(dir, "/"), "/", "-"))
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

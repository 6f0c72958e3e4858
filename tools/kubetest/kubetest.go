// Package kubetest runs a real Kubernetes API server for tests: etcd (Debian etcd-server) and
// kube-apiserver (built by `go tool task kube-apiserver`) on loopback ephemeral ports in a
// temporary directory, with a generated service-account signing key and token authentication.
// There is no scheduler, kubelet or controller manager: tests create ServiceAccounts themselves
// and set spec.nodeName on their pods.
package kubetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/portcullis-mesh/portcullis/tools/procs"
)

// Issuer is the service-account token issuer ("iss") of the test API server.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// AdminUser is in system:masters.
const AdminUser = "admin"

// Options configures a cluster.
type Options struct {
	// CRDDirs hold CRD manifests to install (and wait for) before Start returns.
	CRDDirs []string
	// Users are extra token-authenticated users, without any permission until a test binds
	// one (see UserConfig).
	Users []string
}

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	// Config is a system:masters client config.
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface

	dir       string
	host      string
	caFile    string
	tokens    map[string]string // user -> bearer token
	etcd      *procs.Process
	apiServer *procs.Process
}

// Start runs a cluster that t.Cleanup stops. It fails t (never skips) when a binary is missing.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := start(t.TempDir(), opts)
	if c != nil {
		t.Cleanup(c.stop)
	}
	if err != nil {
		t.Fatalf("starting kubernetes: %v", err)
	}
	for _, dir := range opts.CRDDirs {
		if err := c.InstallCRDs(context.Background(), dir); err != nil {
			t.Fatalf("installing crds: %v", err)
		}
	}
	return c
}

func start(dir string, opts Options) (*Cluster, error) {
	apiBin, err := apiServerBinary()
	if err != nil {
		return nil, err
	}
	etcdBin, err := etcdBinary()
	if err != nil {
		return nil, err
	}
	ports, err := procs.FreePorts(3)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort := procs.HostPort(ports[0]), procs.HostPort(ports[1]), ports[2]
	c := &Cluster{dir: dir, host: "https://" + procs.HostPort(apiPort), tokens: map[string]string{}}

	c.etcd = &procs.Process{Name: "etcd", Bin: etcdBin, Log: filepath.Join(dir, "etcd.log"), Args: []string{
		"--name", "kubetest", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://" + etcdClient, "--advertise-client-urls", "http://" + etcdClient,
		"--listen-peer-urls", "http://" + etcdPeer, "--initial-advertise-peer-urls", "http://" + etcdPeer,
		"--initial-cluster", "kubetest=http://" + etcdPeer,
	}}
	if err := c.etcd.Start(); err != nil {
		return c, err
	}
	if err := c.etcd.WaitFor(30*time.Second, func() error { return httpOK("http://"+etcdClient+"/health", "") }); err != nil {
		return c, err
	}

	saKey, saPub, err := writeServiceAccountKey(dir)
	if err != nil {
		return c, err
	}
	tokensFile, err := c.writeTokens(append([]string{AdminUser}, opts.Users...))
	if err != nil {
		return c, err
	}
	certDir := filepath.Join(dir, "apiserver-certs")
	c.caFile = filepath.Join(certDir, "apiserver.crt")
	c.apiServer = &procs.Process{Name: "kube-apiserver", Bin: apiBin, Log: filepath.Join(dir, "kube-apiserver.log"), Args: []string{
		"--etcd-servers=http://" + etcdClient,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--cert-dir=" + certDir,
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + saPub, "--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--token-auth-file=" + tokensFile,
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
	}}
	if err := c.StartAPIServer(); err != nil {
		return c, err
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return c, err
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		return c, err
	}
	return c, nil
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) on the same port, with the
// same certificate and keys, and waits until it is ready.
func (c *Cluster) StartAPIServer() error {
	if err := c.apiServer.Start(); err != nil {
		return err
	}
	ready := func() error { return httpOK(c.host+"/readyz", c.tokens[AdminUser]) }
	if err := c.apiServer.WaitFor(60*time.Second, ready); err != nil {
		return err
	}
	c.Config = c.UserConfig(AdminUser)
	return nil
}

// apiServerGrace bounds kube-apiserver's graceful stop: with watches open it otherwise waits for
// its 60s shutdown timeout (HTTP/2 streams that never end), which only slows tests down.
const apiServerGrace = 3 * time.Second

// StopAPIServer stops kube-apiserver: SIGTERM, then SIGKILL after a few seconds. etcd keeps
// running, so no data is lost.
func (c *Cluster) StopAPIServer() { c.apiServer.Stop(apiServerGrace) }

func (c *Cluster) stop() {
	if c.apiServer != nil {
		c.apiServer.Stop(apiServerGrace)
	}
	if c.etcd != nil {
		c.etcd.Stop(10 * time.Second)
	}
}

// Host is the API server's URL.
func (c *Cluster) Host() string { return c.host }

// CAFile is the API server's serving certificate (self-signed).
func (c *Cluster) CAFile() string { return c.caFile }

// UserConfig is a client config that authenticates as user (one of Options.Users, or AdminUser).
func (c *Cluster) UserConfig(user string) *rest.Config {
	return &rest.Config{
		Host:            c.host,
		BearerToken:     c.tokens[user],
		TLSClientConfig: rest.TLSClientConfig{CAFile: c.caFile},
		QPS:             -1, // tests create objects in bursts; no client-side throttling
	}
}

// Kubeconfig writes a kubeconfig file for user, for processes that take -kubeconfig.
func (c *Cluster) Kubeconfig(user string) (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.host, CertificateAuthority: c.caFile}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: c.tokens[user]}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: user}
	cfg.CurrentContext = "kubetest"
	path := filepath.Join(c.dir, "kubeconfig-"+user)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("writing kubeconfig: %w", err)
	}
	return path, nil
}

func (c *Cluster) writeTokens(users []string) (string, error) {
	var b strings.Builder
	for _, u := range users {
		raw := make([]byte, 16)
		if _, err := rand.Read(raw); err != nil {
			return "", err
		}
		tok := hex.EncodeToString(raw)
		c.tokens[u] = tok
		group := ""
		if u == AdminUser {
			group = "system:masters"
		}
		fmt.Fprintf(&b, "%s,%s,%s,%q\n", tok, u, u, group)
	}
	path := filepath.Join(c.dir, "tokens.csv")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// writeServiceAccountKey makes the key the API server signs service-account tokens with.
func writeServiceAccountKey(dir string) (keyFile, pubFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	keyFile, pubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return keyFile, pubFile, os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// TokenFile writes user's bearer token to a file, for processes that read one (e.g.
// -token-jwks-bearer-file).
func (c *Cluster) TokenFile(user string) (string, error) {
	path := filepath.Join(c.dir, "token-"+user)
	return path, os.WriteFile(path, []byte(c.tokens[user]), 0o600)
}

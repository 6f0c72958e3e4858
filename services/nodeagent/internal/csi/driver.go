// Package csi makes the node agent a CSI node plugin for ephemeral inline volumes: a pod that
// mounts a volume of this driver gets a socket of its own, opened by the agent for that pod
// alone, with no hostPath (so the pod passes Pod Security restricted). The kubelet tells the
// driver which pod a volume is for (podInfoOnMount); a caller on that socket is that pod.
//
// The driver registers itself with the kubelet through the plugin registration socket
// (registration.go), serves the CSI Identity and Node services (node.go), keeps one directory
// per published volume under its state directory (state.go) and bind-mounts the socket's
// directory at the kubelet's target path (mount.go). The sockets themselves are opened and
// closed by a Publisher: the agent serves SDS on them.
package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/portcullis-mesh/portcullis/libs/lifecycle"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/unixsock"
)

// DefaultDriverName is the CSIDriver name pods put in their volumes.
const DefaultDriverName = "csi.portcullis.io"

// PodInfo is what the kubelet told us about the pod a volume was published for.
type PodInfo struct {
	Namespace, Name, UID, ServiceAccount string
	// Token is the pod's service account token for Config.TokenAudience, as the kubelet sent it
	// at publish time; "" if none was asked for or sent. Only OpenPodSocket gets it, and never
	// after Restore: the driver keeps it nowhere, in memory or on disk. It is short-lived: do not
	// keep it past the check it is used for.
	Token string
}

// Publisher opens and closes the per-pod socket: the agent serves SDS (and more) on it, and a
// caller on it is that pod (checked against mcp-sync's pods on this node, like every identity).
//
// The driver calls it from one goroutine at a time. OpenPodSocket is given a path where no file
// exists (a stale socket of a previous run is removed first); it must be listening when it
// returns, on a socket the pod's processes can connect to whatever their uid (mode 0666: the
// directories above it keep everyone but the pod and root out). ClosePodSocket is called once for each successful OpenPodSocket, also for a
// UID whose socket is already closed, and must then return nil.
type Publisher interface {
	OpenPodSocket(pod PodInfo, socketPath string) error
	ClosePodSocket(uid string) error
}

// Config configures a Driver.
type Config struct {
	// DriverName is the CSIDriver's name (DefaultDriverName if empty).
	DriverName string
	// NodeName is returned by NodeGetInfo: the kubelet checks it against its own node.
	NodeName string
	// Endpoint is the path of the CSI socket, as the kubelet sees it (the chart mounts the
	// kubelet's plugins directory at the same path in the agent).
	Endpoint string
	// RegistrationDir is the kubelet's plugin registration directory (plugins_registry).
	RegistrationDir string
	// StateDir holds the per-pod directories; the pods' sockets live there. It must outlive
	// the agent's container (a hostPath), or a restarted agent cannot re-listen on sockets the
	// pods still have mounted.
	StateDir string
	// TokenAudience picks the token passed in PodInfo.Token from those the kubelet sends
	// (CSIDriver tokenRequests); "" passes none.
	TokenAudience string
	Publisher     Publisher
	Logger        *slog.Logger
}

// Driver is the CSI node plugin.
type Driver struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	// pods are the published volumes by pod UID (a pod gets one volume of this driver); open
	// says whether the Publisher has the pod's socket open.
	pods map[string]*volume
	// registration is the kubelet's last word on our registration: nil once it registered us.
	registration error
}

type volume struct {
	record
	open bool
}

// maxSocketPath is the longest path a Unix socket can be bound at (sun_path less its NUL).
const maxSocketPath = 107

var driverName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// New checks cfg; nothing is started.
func New(cfg Config) (*Driver, error) {
	if cfg.DriverName == "" {
		cfg.DriverName = DefaultDriverName
	}
	var errs []error
	if len(cfg.DriverName) > 63 || !driverName.MatchString(cfg.DriverName) {
		errs = append(errs, fmt.Errorf("CSI driver name %q: want a DNS name of at most 63 characters", cfg.DriverName))
	}
	if cfg.NodeName == "" {
		errs = append(errs, errors.New("CSI driver: the node name is required"))
	}
	for _, p := range []struct{ name, path string }{
		{"endpoint", cfg.Endpoint}, {"registration directory", cfg.RegistrationDir}, {"state directory", cfg.StateDir},
	} {
		if !filepath.IsAbs(p.path) {
			errs = append(errs, fmt.Errorf("CSI %s %q: want an absolute path", p.name, p.path))
		}
	}
	// A Unix socket path holds at most 107 bytes; the longest pod UID is 36 characters.
	if n := len(filepath.Join(cfg.StateDir, podsDir, strings.Repeat("u", 36), socketDir, SocketName)); n > maxSocketPath {
		errs = append(errs, fmt.Errorf("CSI state directory %q is too long: its pods' socket paths would be %d bytes, more than the %d a Unix socket allows", cfg.StateDir, n, maxSocketPath))
	}
	if cfg.Publisher == nil {
		errs = append(errs, errors.New("CSI driver: a Publisher is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Driver{
		cfg: cfg, log: cfg.Logger.With("csi_driver", cfg.DriverName), pods: map[string]*volume{},
		registration: errors.New("the kubelet has not registered the CSI driver yet"),
	}, nil
}

// RegistrationSocket is the path of the plugin registration socket the kubelet watches for.
func (d *Driver) RegistrationSocket() string {
	return filepath.Join(d.cfg.RegistrationDir, d.cfg.DriverName+"-reg.sock")
}

// Run restores the published volumes, serves CSI and the plugin registration until ctx ends,
// and removes both sockets on exit. The pods' sockets stay published: the next agent reopens
// them (Restore).
func (d *Driver) Run(ctx context.Context) error {
	if err := d.Restore(); err != nil {
		return err
	}
	csiLis, err := listenUnix(d.cfg.Endpoint)
	if err != nil {
		return err
	}
	defer os.Remove(d.cfg.Endpoint)
	// Listen for the kubelet only once the driver can serve it: the kubelet registers the
	// driver as soon as this socket appears.
	regLis, err := listenUnix(d.RegistrationSocket())
	if err != nil {
		csiLis.Close()
		return err
	}
	defer os.Remove(d.RegistrationSocket())

	csiSrv := grpc.NewServer()
	csipb.RegisterIdentityServer(csiSrv, identityServer{d: d})
	csipb.RegisterNodeServer(csiSrv, nodeServer{d: d})
	regSrv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(regSrv, registrationServer{d})

	d.log.Info(lifecycle.ListeningMsg, "listener", "csi", "addr", d.cfg.Endpoint)
	d.log.Info(lifecycle.ListeningMsg, "listener", "csi-registration", "addr", d.RegistrationSocket())
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return lifecycle.ServeGRPC(ctx, csiSrv, csiLis) })
	g.Go(func() error { return lifecycle.ServeGRPC(ctx, regSrv, regLis) })
	return g.Wait()
}

// Ready is nil once the kubelet has registered the driver, else says why not: a node whose
// kubelet does not know the driver cannot start pods that mount its volumes.
func (d *Driver) Ready() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.registration
}

// PodBySocket returns the pod whose socket is at path (as given to OpenPodSocket), without a
// token.
func (d *Driver) PodBySocket(path string) (PodInfo, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for uid, v := range d.pods {
		if d.SocketPath(uid) == path {
			return v.pod(), true
		}
	}
	return PodInfo{}, false
}

// Restore reads the state directory and reopens the socket of every volume still mounted at its
// target path: bind mounts outlive the agent, but nobody listens on their sockets until this
// runs. A volume no longer mounted is forgotten (the kubelet publishes it again if the pod is
// still there). Run calls it first; volumes it knows already are left alone, so calling it again
// does nothing more.
func (d *Driver) Restore() error {
	d.mu.Lock() // a publish in flight has a directory but maybe no record yet
	defer d.mu.Unlock()
	records, broken, err := d.readRecords()
	if err != nil {
		return err
	}
	for _, uid := range broken {
		if _, known := d.pods[uid]; known {
			continue
		}
		if err := d.removePodDir(uid); err != nil {
			d.log.Warn("removing broken CSI volume state", "pod_uid", uid, "error", err)
		}
	}
	for _, r := range records {
		if _, known := d.pods[r.UID]; known {
			continue
		}
		mounted, err := isMountPoint(r.TargetPath)
		if err != nil {
			return err
		}
		if !mounted {
			d.log.Info("dropping CSI volume no longer mounted", "pod_uid", r.UID, "target_path", r.TargetPath)
			if err := d.removePodDir(r.UID); err != nil {
				d.log.Warn("removing CSI volume state", "pod_uid", r.UID, "error", err)
			}
			continue
		}
		v := &volume{record: r}
		d.pods[r.UID] = v
		// A pod whose socket cannot be opened keeps its record: its unpublish still cleans up.
		if err := d.openSocket(v, ""); err != nil {
			d.log.Error("reopening pod socket", "pod_uid", r.UID, "namespace", r.Namespace, "pod", r.Name, "error", err)
			continue
		}
		d.log.Info("pod socket reopened", "pod_uid", r.UID, "namespace", r.Namespace, "pod", r.Name)
	}
	return nil
}

// openSocket has the Publisher listen on the pod's socket, removing a stale one first; token is
// handed over and forgotten. Called with d.mu held.
func (d *Driver) openSocket(v *volume, token string) error {
	if v.open {
		return nil
	}
	path := d.SocketPath(v.UID)
	if err := unixsock.RemoveStale(path); err != nil {
		return err
	}
	pod := v.pod()
	pod.Token = token
	if err := d.cfg.Publisher.OpenPodSocket(pod, path); err != nil {
		return fmt.Errorf("opening the pod's socket: %w", err)
	}
	v.open = true
	return nil
}

// closeSocket has the Publisher close the pod's socket. Called with d.mu held.
func (d *Driver) closeSocket(v *volume) error {
	if !v.open {
		return nil
	}
	if err := d.cfg.Publisher.ClosePodSocket(v.UID); err != nil {
		return fmt.Errorf("closing the pod's socket: %w", err)
	}
	v.open = false
	return nil
}

// listenUnix listens on path (mode 0600: only the kubelet, root, calls these sockets), creating
// its directory and replacing a stale socket.
func listenUnix(path string) (net.Listener, error) { return unixsock.Listen(path, 0o600) }

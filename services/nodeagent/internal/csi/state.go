package csi

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The state directory holds one directory per published volume:
//
//	<state>/pods/<pod uid>/          0700: only root on the node gets in
//	<state>/pods/<pod uid>/pod.json  0600: the volume and the pod, read back by Restore
//	<state>/pods/<pod uid>/sock/     0755: bind-mounted (read-only) at the kubelet's target path
//	<state>/pods/<pod uid>/sock/socket   0666: the pod's own socket
//
// Only sock/ is in the pod, so pod.json is not. The socket is open to every user because the
// pod's processes may run as any uid (Pod Security restricted asks only for non-root); on the
// node it is reached only through the 0700 directory above it, so the pod is the only caller
// besides root. The token is not persisted: the pod's identity is the socket it calls on, and a
// token on disk would be a credential to steal for no use after a restart.
const (
	podsDir    = "pods"
	recordFile = "pod.json"
	socketDir  = "sock"
	// SocketName is the socket's name in the volume: with the volume mounted at
	// /var/run/secrets/workload-spiffe-uds, Istio's default socket path works unchanged.
	SocketName = "socket"
)

// record is what pod.json holds.
type record struct {
	VolumeID       string `json:"volumeID"`
	TargetPath     string `json:"targetPath"`
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	UID            string `json:"uid"`
	ServiceAccount string `json:"serviceAccount"`
}

func (r record) pod() PodInfo {
	return PodInfo{Namespace: r.Namespace, Name: r.Name, UID: r.UID, ServiceAccount: r.ServiceAccount}
}

func (d *Driver) podDir(uid string) string  { return filepath.Join(d.cfg.StateDir, podsDir, uid) }
func (d *Driver) sockDir(uid string) string { return filepath.Join(d.podDir(uid), socketDir) }

// SocketPath is where the socket of the pod with this UID is on the node.
func (d *Driver) SocketPath(uid string) string { return filepath.Join(d.sockDir(uid), SocketName) }

// makePodDir creates the pod's directories and writes its record atomically (a crash leaves
// the old record or the new one, never half of one).
func (d *Driver) makePodDir(r record) error {
	if err := os.MkdirAll(filepath.Join(d.cfg.StateDir, podsDir), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	dir := d.podDir(r.UID)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating pod directory: %w", err)
	}
	if err := os.Mkdir(d.sockDir(r.UID), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	// MkdirAll and Mkdir obey the umask; the modes are the point here.
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(d.sockDir(r.UID), 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, recordFile+".*")
	if err != nil {
		return fmt.Errorf("writing pod record: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing pod record: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing pod record: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing pod record: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, recordFile)); err != nil {
		return fmt.Errorf("writing pod record: %w", err)
	}
	return nil
}

// readRecords reads every pod.json under the state directory. A directory without a readable
// record is returned by name in broken, for the caller to remove.
func (d *Driver) readRecords() (records []record, broken []string, err error) {
	entries, err := os.ReadDir(filepath.Join(d.cfg.StateDir, podsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading state directory: %w", err)
	}
	for _, e := range entries {
		uid := e.Name()
		b, err := os.ReadFile(filepath.Join(d.podDir(uid), recordFile))
		var r record
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err == nil && (r.UID != uid || !podUID.MatchString(uid) || checkTargetPath(r.TargetPath) != nil || r.VolumeID == "") {
			err = errors.New("record does not match its directory")
		}
		if err != nil {
			d.log.Warn("dropping unreadable CSI volume state", "dir", d.podDir(uid), "error", err)
			broken = append(broken, uid)
			continue
		}
		records = append(records, r)
	}
	return records, broken, nil
}

// removePodDir removes the pod's directory; callers unmount the target path first.
func (d *Driver) removePodDir(uid string) error {
	if err := os.RemoveAll(d.podDir(uid)); err != nil {
		return fmt.Errorf("removing pod directory: %w", err)
	}
	return nil
}

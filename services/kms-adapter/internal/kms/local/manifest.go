package local

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
)

// ManifestFile names the CA directories of a rotation. A state directory from before rotation has
// none: its flat files are then the only, active CA. It is written on the first rotation step.
const ManifestFile = "rotation.json"

// initialDir is the CA kept as flat files in the state directory itself; later CAs live in
// subdirectories named caDirPrefix + unix nanoseconds, each holding the same four files.
const (
	initialDir  = "."
	caDirPrefix = "ca-"
)

var caDirName = regexp.MustCompile(`^ca-[0-9]+$`)

// manifest is the JSON form of rotation.json.
type manifest struct {
	BundleVersion uint64             `json:"bundle_version"`
	Active        string             `json:"active"`
	Next          string             `json:"next,omitempty"`
	Previous      []manifestPrevious `json:"previous,omitempty"`
}

type manifestPrevious struct {
	Dir      string    `json:"dir"`
	RetireAt time.Time `json:"retire_at"`
}

// state is one rotation state. It is immutable: a step builds the next one, persists it, and swaps
// it in (CA.current), so Sign and TrustBundle read it without a lock.
type state struct {
	version  uint64
	active   *authority
	next     *authority   // prepared, not signing
	previous []*authority // newest first; root only, their keys are deleted
	manifest bool         // rotation.json exists
}

// roots lists every trusted root: active, next, then previous ones.
func (st *state) roots() []*x509.Certificate {
	roots := []*x509.Certificate{st.active.root}
	if st.next != nil {
		roots = append(roots, st.next.root)
	}
	for _, p := range st.previous {
		roots = append(roots, p.root)
	}
	return roots
}

// dirs lists the CA directories the state refers to.
func (st *state) dirs() []string {
	dirs := []string{st.active.dir}
	if st.next != nil {
		dirs = append(dirs, st.next.dir)
	}
	for _, p := range st.previous {
		dirs = append(dirs, p.dir)
	}
	return dirs
}

func (st *state) toManifest() manifest {
	m := manifest{BundleVersion: st.version, Active: st.active.dir}
	if st.next != nil {
		m.Next = st.next.dir
	}
	for _, p := range st.previous {
		m.Previous = append(m.Previous, manifestPrevious{Dir: p.dir, RetireAt: p.retireAt.UTC()})
	}
	return m
}

// loadState loads the CA state of cfg.StateDir, creating a CA on first start. Nothing is modified
// unless everything loads; then leftovers of an interrupted step (a CA directory rotation.json
// does not name, keys of a CA that no longer signs) are deleted.
func loadState(cfg Config) (*state, error) {
	if err := os.MkdirAll(cfg.StateDir, dirMode); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone; the keys' directory stays private anyway.
	if err := os.Chmod(cfg.StateDir, dirMode); err != nil {
		return nil, fmt.Errorf("restricting state directory: %w", err)
	}
	m, err := readManifest(filepath.Join(cfg.StateDir, ManifestFile))
	if err != nil {
		return nil, err
	}
	var st *state
	if m == nil {
		st, err = loadUnrotated(cfg)
	} else {
		st, err = loadRotated(cfg, m)
	}
	if err != nil {
		return nil, err
	}
	now := cfg.Clock.Now()
	if err := checkActive(cfg, st.active, now); err != nil {
		return nil, err
	}
	if st.active, err = renewIntermediate(cfg, st.active, now); err != nil {
		return nil, err
	}
	if st.manifest {
		removeLeftovers(cfg, st)
	}
	return st, nil
}

// loadUnrotated loads a state directory without rotation.json: the flat files are the active CA.
func loadUnrotated(cfg Config) (*state, error) {
	if dirs := caDirs(cfg.StateDir); len(dirs) > 0 {
		return nil, fmt.Errorf("%s is missing but CA directories %s exist; restore it from a backup",
			filepath.Join(cfg.StateDir, ManifestFile), strings.Join(dirs, ", "))
	}
	active, err := loadOrCreate(cfg)
	if err != nil {
		return nil, err
	}
	return &state{version: 1, active: active}, nil
}

func loadRotated(cfg Config, m *manifest) (*state, error) {
	st := &state{version: m.BundleVersion, manifest: true}
	var err error
	if st.active, err = loadSigning(cfg, m.Active); err != nil {
		return nil, err
	}
	if m.Next != "" {
		if st.next, err = loadSigning(cfg, m.Next); err != nil {
			return nil, err
		}
	}
	for _, p := range m.Previous {
		path := filepath.Join(cfg.StateDir, p.Dir, RootCertFile)
		root, err := readCert(path)
		if err != nil {
			return nil, err
		}
		if err := checkRoot(root, cfg.TrustDomain); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		st.previous = append(st.previous, &authority{dir: p.Dir, root: root, retireAt: p.RetireAt})
	}
	return st, nil
}

// readManifest returns nil when path does not exist; anything it cannot use is an error naming it.
func readManifest(path string) (*manifest, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &m, nil
}

func (m *manifest) validate() error {
	if m.BundleVersion == 0 {
		return errors.New("bundle_version must be positive")
	}
	if m.Active == "" {
		return errors.New("no active CA")
	}
	dirs := []string{m.Active}
	if m.Next != "" {
		dirs = append(dirs, m.Next)
	}
	for _, p := range m.Previous {
		if p.RetireAt.IsZero() {
			return fmt.Errorf("previous CA %q has no retire_at", p.Dir)
		}
		dirs = append(dirs, p.Dir)
	}
	for i, d := range dirs {
		// Only names this package makes: a path elsewhere would let the manifest point at any file.
		if d != initialDir && !caDirName.MatchString(d) {
			return fmt.Errorf("%q is not a CA directory name", d)
		}
		if slices.Contains(dirs[:i], d) {
			return fmt.Errorf("CA directory %q named twice", d)
		}
	}
	return nil
}

func writeManifest(stateDir string, st *state) error {
	data, err := json.MarshalIndent(st.toManifest(), "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", ManifestFile, err)
	}
	return writeFiles(stateDir, []stateFile{{ManifestFile, append(data, '\n'), keyMode}})
}

// caDirs lists the subdirectories that hold (or held) CAs, sorted.
func caDirs(stateDir string) []string {
	entries, _ := os.ReadDir(stateDir) // loading reports an unreadable directory by name
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && caDirName.MatchString(e.Name()) {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs
}

// newCADirName names a CA directory made at now that does not exist yet.
func newCADirName(stateDir string, now time.Time) string {
	for n := now.UnixNano(); ; n++ {
		name := caDirPrefix + strconv.FormatInt(n, 10)
		if _, err := os.Lstat(filepath.Join(stateDir, name)); errors.Is(err, fs.ErrNotExist) {
			return name
		}
	}
}

// writeCADir writes a new CA directory completely (files and the directory entry synced) before
// any manifest names it; a failure removes what was written.
func writeCADir(stateDir, name string, files []stateFile) error {
	dir := filepath.Join(stateDir, name)
	if err := os.Mkdir(dir, dirMode); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := errors.Join(writeFiles(dir, files), syncDir(stateDir)); err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	return nil
}

// removeKeys deletes the private keys of a CA that no longer signs.
func removeKeys(stateDir, name string) error {
	return removeFiles(filepath.Join(stateDir, name), RootKeyFile, IntermediateKeyFile)
}

// removeCA deletes a CA whose root is no longer trusted, keys first.
func removeCA(stateDir, name string) error {
	if name == initialDir {
		return removeFiles(stateDir, RootKeyFile, IntermediateKeyFile, RootCertFile, IntermediateCertFile)
	}
	if err := removeKeys(stateDir, name); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(stateDir, name)); err != nil {
		return err
	}
	return syncDir(stateDir)
}

func removeFiles(dir string, names ...string) error {
	var removed bool
	for _, name := range names {
		err := os.Remove(filepath.Join(dir, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removed = removed || err == nil
	}
	if !removed {
		return nil
	}
	return syncDir(dir)
}

// removeLeftovers deletes what an interrupted step left behind: CA directories the manifest does
// not name (written before a manifest that never came, or retired before they were deleted), and
// keys of CAs that no longer sign. Failures are logged: the state itself is sound.
func removeLeftovers(cfg Config, st *state) {
	named := st.dirs()
	leftovers := caDirs(cfg.StateDir)
	if !slices.Contains(named, initialDir) {
		leftovers = append(leftovers, initialDir)
	}
	for _, name := range leftovers {
		if slices.Contains(named, name) {
			continue
		}
		if name != initialDir {
			cfg.Logger.Warn("removing a CA directory that "+ManifestFile+" does not name (left by an interrupted step)",
				logkey.StateDir, filepath.Join(cfg.StateDir, name))
		}
		if err := removeCA(cfg.StateDir, name); err != nil {
			cfg.Logger.Error("removing a CA that is no longer trusted", logkey.StateDir, filepath.Join(cfg.StateDir, name), logkey.Err, err)
		}
	}
	for _, p := range st.previous {
		if err := removeKeys(cfg.StateDir, p.dir); err != nil {
			cfg.Logger.Error("removing keys of a CA that no longer signs", logkey.StateDir, filepath.Join(cfg.StateDir, p.dir), logkey.Err, err)
		}
	}
}

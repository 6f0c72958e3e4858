// Package file is the source that reads Kubernetes manifests from a directory: the standalone
// and dev-stack mode of mcp-sync. It watches the directory and rescans it periodically.
package file

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/inventory"
)

// Defaults for Config.
const (
	DefaultResync   = 30 * time.Second
	DefaultDebounce = 100 * time.Millisecond
)

// Config configures a file source.
type Config struct {
	// Dir is read recursively: *.yaml, *.yml and *.json files. Entries whose name starts with "."
	// are skipped: editor swap files and the "..data" directories of a mounted ConfigMap, which
	// would otherwise be read twice.
	Dir string
	// Resync is the period of the full rescan that catches anything the watch missed; 0 means
	// DefaultResync.
	Resync time.Duration
	// Debounce coalesces a burst of file events (an editor's atomic save, a git checkout) into
	// one rescan; 0 means DefaultDebounce.
	Debounce time.Duration
	Logger   *slog.Logger
	Clock    clock.WithTicker // nil means the real clock
	// Errors counts broken files and watch failures; may be nil.
	Errors prometheus.Counter
	// LastGoodLoad is set to the time of the last scan that read every file without error; may
	// be nil. A file that stays broken therefore makes it age, which is what an alert wants.
	LastGoodLoad prometheus.Gauge
}

// Source is the file source. Create it with New.
type Source struct {
	cfg     Config
	watcher *fsnotify.Watcher
	watched map[string]bool       // directories currently watched
	files   map[string]*fileState // by path
	// duplicates is the number of objects that the last merge dropped because an earlier file
	// already defined them.
	duplicates int
}

// fileState remembers a file's last good objects and the content that last failed, so that a
// broken file keeps its last good objects and is reported once, not on every rescan.
type fileState struct {
	good     objects
	goodHash [sha256.Size]byte
	hasGood  bool
	badHash  [sha256.Size]byte
	bad      bool
}

// New checks cfg and returns a source that has not read anything yet.
func New(cfg Config) (*Source, error) {
	if cfg.Dir == "" {
		return nil, errors.New("manifests directory is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("logger is required")
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	cfg.Logger = cfg.Logger.With("source", "file", "dir", cfg.Dir)
	return &Source{cfg: cfg, watched: map[string]bool{}, files: map[string]*fileState{}}, nil
}

// Run implements source.Source.
func (s *Source) Run(ctx context.Context, sink func(inventory.State)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", s.cfg.Dir, err)
	}
	defer w.Close()
	s.watcher = w

	if err := s.load(true, sink); err != nil {
		return fmt.Errorf("initial load: %w", err)
	}
	s.cfg.Logger.Info("manifests loaded", "files", len(s.files))

	ticker := s.cfg.Clock.NewTicker(s.cfg.Resync)
	defer ticker.Stop()
	var debounce <-chan time.Time
	schedule := func() {
		if debounce == nil {
			debounce = s.cfg.Clock.After(s.cfg.Debounce)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
			// Chmod alone changes no content; some tools touch files constantly.
			if ev.Op != fsnotify.Chmod {
				s.cfg.Logger.Debug("manifest event", "event", ev.String())
				schedule()
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("file watcher closed")
			}
			// An overflow loses events: rescan everything.
			s.report("file watch error", err)
			schedule()
		case <-debounce:
			debounce = nil
			s.reload(sink)
		case <-ticker.C():
			s.reload(sink)
		}
	}
}

func (s *Source) reload(sink func(inventory.State)) {
	if err := s.load(false, sink); err != nil {
		// The directory itself is unreadable (e.g. removed): keep serving the last state.
		s.report("rescanning manifests, keeping the last state", err)
	}
}

// load scans and hands the state to sink if it changed (always on the initial load).
func (s *Source) load(initial bool, sink func(inventory.State)) error {
	changed, clean, err := s.scan()
	if err != nil {
		return err
	}
	deliver := changed || initial
	var st inventory.State
	if deliver {
		st = s.merge() // also counts duplicates, which make the load unclean
	}
	if clean && s.duplicates == 0 && s.cfg.LastGoodLoad != nil {
		s.cfg.LastGoodLoad.Set(float64(s.cfg.Clock.Now().UnixNano()) / 1e9)
	}
	if deliver {
		sink(st)
	}
	return nil
}

// scan reads the directory, updates the per-file state and reports whether any file's objects
// changed and whether every file read cleanly. It returns an error only if the directory itself
// cannot be read.
func (s *Source) scan() (changed, clean bool, err error) {
	paths, complete, err := s.list()
	if err != nil {
		return false, false, err
	}
	clean = complete
	seen := make(map[string]bool, len(paths))
	for _, path := range paths {
		seen[path] = true
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			delete(seen, path) // removed since it was listed
			continue
		}
		if err != nil {
			s.report("reading manifest file, keeping its last good objects", err)
			clean = false
			continue
		}
		st := s.files[path]
		if st == nil {
			st = &fileState{}
			s.files[path] = st
		}
		sum := sha256.Sum256(data)
		switch {
		case st.hasGood && sum == st.goodHash:
			st.bad = false // reverted to the good content
		case st.bad && sum == st.badHash:
			// still the same broken content, already reported
		default:
			objs, err := decodeFile(path, data, s.cfg.Logger)
			if err != nil {
				st.bad, st.badHash = true, sum
				s.report("broken manifest file, keeping its last good objects", err, "file", path)
				break
			}
			st.good, st.goodHash, st.hasGood, st.bad = objs, sum, true, false
			changed = true
		}
		if st.bad {
			clean = false
		}
	}
	// Files under a directory that could not be read are kept, not treated as deleted.
	if complete {
		for path, st := range s.files {
			if !seen[path] {
				delete(s.files, path)
				changed = changed || st.hasGood
			}
		}
	}
	return changed, clean, nil
}

// list walks the directory, returns the manifest files in it and keeps the watch list in step.
// complete is false if part of the tree could not be read.
func (s *Source) list() (paths []string, complete bool, err error) {
	complete = true
	dirs := map[string]bool{}
	err = filepath.WalkDir(s.cfg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == s.cfg.Dir {
				return err
			}
			s.report("reading manifests directory", err)
			complete = false
			return nil
		}
		if path != s.cfg.Dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			// Watch before the directory's entries are read, so that a file created meanwhile
			// shows up either in this listing or as an event.
			dirs[path] = true
			s.watch(path)
			return nil
		}
		if !isManifest(d.Name()) {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			// A mounted ConfigMap links each file into its "..data" directory.
			info, err := os.Stat(path)
			if err != nil || !info.Mode().IsRegular() {
				return nil
			}
		} else if !d.Type().IsRegular() {
			return nil
		}
		paths = append(paths, path)
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("reading %s: %w", s.cfg.Dir, err)
	}
	for dir := range s.watched {
		if !dirs[dir] {
			_ = s.watcher.Remove(dir) // fails when the kernel already dropped the watch
			delete(s.watched, dir)
		}
	}
	return paths, complete, nil
}

func (s *Source) watch(dir string) {
	if s.watched[dir] {
		return
	}
	if err := s.watcher.Add(dir); err != nil {
		s.report("watching manifests directory, relying on the periodic rescan", err, "dir", dir)
		return
	}
	s.watched[dir] = true
}

func isManifest(name string) bool {
	switch filepath.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// merge builds the state from every file's last good objects. Files are taken in path order, and
// an object defined twice keeps its first definition, so the result does not depend on the
// order of events.
func (s *Source) merge() inventory.State {
	paths := make([]string, 0, len(s.files))
	for p, st := range s.files {
		if st.hasGood {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	var out inventory.State
	s.duplicates = 0
	seen := map[string]string{} // "<kind> <name>" -> first file
	keep := func(kind, name, path string) bool {
		key := kind + " " + name
		if first, ok := seen[key]; ok {
			s.duplicates++
			s.report("duplicate object, keeping the first definition",
				fmt.Errorf("%s %q is defined in %s and again in %s", kind, name, first, path), "file", path)
			return false
		}
		seen[key] = path
		return true
	}
	for _, p := range paths {
		g := s.files[p].good
		out.Pods = appendKept(out.Pods, g.pods, "Pod", p, keep)
		out.ServiceAccounts = appendKept(out.ServiceAccounts, g.serviceAccounts, "ServiceAccount", p, keep)
		out.Namespaces = appendKept(out.Namespaces, g.namespaces, "Namespace", p, keep)
		out.KeySecrets = appendKept(out.KeySecrets, g.keySecrets, "KeySecret", p, keep)
		out.TLSPolicies = appendKept(out.TLSPolicies, g.tlsPolicies, "TLSPolicy", p, keep)
		out.ScopeConfigs = appendKept(out.ScopeConfigs, g.scopeConfigs, "ScopeConfig", p, keep)
	}
	sortByName(out.Pods)
	sortByName(out.ServiceAccounts)
	sortByName(out.Namespaces)
	sortByName(out.KeySecrets)
	sortByName(out.TLSPolicies)
	sortByName(out.ScopeConfigs)
	return out
}

// appendKept appends the objects of one file that keep admits (the first definition of a name wins).
func appendKept[T interface{ GetName() string }](out, objs []T, kind, path string, keep func(kind, name, path string) bool) []T {
	for _, o := range objs {
		if keep(kind, o.GetName(), path) {
			out = append(out, o)
		}
	}
	return out
}

func sortByName[T interface{ GetName() string }](s []T) {
	slices.SortFunc(s, func(a, b T) int { return cmp.Compare(a.GetName(), b.GetName()) })
}

func (s *Source) report(msg string, err error, attrs ...any) {
	s.cfg.Logger.Error(msg, append(attrs, "err", err)...)
	if s.cfg.Errors != nil {
		s.cfg.Errors.Inc()
	}
}

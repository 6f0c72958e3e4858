// Package secretstore keeps the node agent's workload certificates and private keys on the node,
// so that a restarted agent serves every identity it held at once: no CSR, no token, no KMS call.
//
// # Layout
//
// The store is one directory (mode 0700, owned by the agent's user) with one file (0600) per
// identity. A file is named by the hex SHA-256 of its SPIFFE ID and holds, in a versioned JSON
// envelope, the ID, the certificate chain (DER, leaf first), the PKCS#8 private key, the pods on
// this node that hold the identity, and the SDS resource names their streams asked for.
//
// # Crash safety
//
// Save writes a temporary file in the same directory (created with O_EXCL, 0600), syncs it,
// renames it over the identity's file and syncs the directory: after a crash the file is either
// the old record or the new one. Temporary files left by a crash are removed by Open. Load never
// fails because of one bad file: a truncated, garbled, foreign or misnamed file is removed and
// reported as an error next to the records that could be read.
//
// The store holds no lock on its directory: it expects one agent per node (the DaemonSet) to
// use it at a time.
//
// # Encryption at rest
//
// With Options.Key, each file's content is sealed with AES-256-GCM under that key, with the
// SPIFFE ID (and the format version) as additional data, so a file copied over another
// identity's file does not decrypt. Each file names the key it was sealed with by a key ID (a
// hash of the key), so a wrong key is reported as such rather than as a corrupt file.
//
// What it protects against: someone who gets a copy of the directory without the key — a backup
// or a snapshot of the node's disk, a disk sent for repair, a tmpfs swapped out to an unencrypted
// swap device — learns no private key.
//
// What it does not protect against: root on the running node. Root can read the key file and the
// agent's memory, and can act as the agent. The key also does not stop an attacker who can write
// the directory from deleting files (the agent then issues anew) or from putting back an older
// file sealed with the same key (it still has to be valid and chain to the trust bundle to be
// used). Hence the chart's default: a tmpfs hostPath (gone when the node reboots, never on disk)
// and no encryption; encryption is for state kept on a persistent disk.
package secretstore

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sentinel errors; Load's errors wrap one of them.
var (
	// ErrCorrupt marks a file that cannot be read as a record: torn, garbled, of an unknown
	// version, not sealed by the key it names, or filed under another identity's name.
	ErrCorrupt = errors.New("corrupt state file")
	// ErrWrongKey marks a file sealed with another key than the store's (or sealed when the store
	// has no key, or plain when it has one).
	ErrWrongKey = errors.New("state file sealed with another key")
	// ErrUnknownFile marks a file the store did not write; Load leaves it alone.
	ErrUnknownFile = errors.New("file the store did not write")
)

// Pod is a pod on this node that holds an identity.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// Record is what the store keeps for one identity.
type Record struct {
	ID    spiffeid.ID
	Chain [][]byte // DER certificates, leaf first
	Key   []byte   // PKCS#8 DER private key of the leaf
	Pods  []Pod    // pods on this node that hold ID
	// ResourceNames are the SDS resource names the pods' streams asked for (may be empty), to
	// push to sidecars that reconnect without asking again.
	ResourceNames []string
}

// Options configures a Store.
type Options struct {
	// Key, if set, seals every file with AES-256-GCM; it must be 32 bytes (see ReadKeyFile).
	Key []byte
	// Logger is told about files removed by Open and Load; nil discards.
	Logger *slog.Logger
}

// Store is a directory of records. It is safe for concurrent use; concurrent Saves of one
// identity each leave a whole file, the last rename winning, so callers that care about order
// serialize their writes per identity.
type Store struct {
	root   *os.Root
	dir    *os.File // the directory itself, to sync it after a rename or a removal
	seal   *sealer  // nil: files are plain
	logger *slog.Logger
}

const (
	fileSuffix = ".json"
	tmpPrefix  = ".tmp-"
	// maxFileSize bounds what Load reads: a record is a few KiB (a long chain and many pods
	// stay far below); anything larger is not ours.
	maxFileSize = 1 << 20
)

// Open opens the store in dir, creating it (mode 0700) if needed, and removes temporary files
// left by a crash. An existing dir must be a real directory (not a symlink), owned by the
// agent's user and closed to group and others: anyone else who could write it could plant keys,
// anyone who could read it could take them.
func Open(dir string, opts Options) (*Store, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var seal *sealer
	if opts.Key != nil {
		var err error
		if seal, err = newSealer(opts.Key); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := checkDir(dir, fi); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("opening state directory: %w", err)
	}
	d, err := root.Open(".")
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("opening state directory: %w", err)
	}
	// The directory checked above must be the one opened, not one swapped in between.
	if opened, err := d.Stat(); err != nil || !os.SameFile(fi, opened) {
		d.Close()
		root.Close()
		return nil, fmt.Errorf("state directory %s changed while it was being opened", dir)
	}
	s := &Store{root: root, dir: d, seal: seal, logger: logger}
	if err := s.removeTemporaries(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func checkDir(dir string, fi fs.FileInfo) error {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("state directory %s is a symlink; refusing it (give the real path)", dir)
	case !fi.IsDir():
		return fmt.Errorf("state directory %s is not a directory", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("state directory %s has mode %04o; refusing it: it must be closed to group and others (0700), "+
			"as it holds private keys", dir, fi.Mode().Perm())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("state directory %s: cannot tell its owner", dir)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("state directory %s is owned by uid %d, not by this process (uid %d); refusing it", dir, st.Uid, uid)
	}
	return nil
}

// Close releases the directory.
func (s *Store) Close() error {
	return errors.Join(s.dir.Close(), s.root.Close())
}

// fileName is where id's record lives: hashing keeps any ID a safe, fixed-length file name.
func fileName(id spiffeid.ID) string {
	sum := sha256.Sum256([]byte(id.String()))
	return hex.EncodeToString(sum[:]) + fileSuffix
}

// Save writes rec atomically, replacing any previous record of rec.ID.
func (s *Store) Save(rec Record) error {
	if rec.ID.IsZero() {
		return errors.New("saving state: record has no SPIFFE ID")
	}
	if len(rec.Chain) == 0 || len(rec.Key) == 0 {
		return fmt.Errorf("saving state of %s: record needs a chain and a key", rec.ID)
	}
	data, err := s.encode(rec)
	if err != nil {
		return fmt.Errorf("saving state of %s: %w", rec.ID, err)
	}
	if err := s.writeFile(fileName(rec.ID), data); err != nil {
		return fmt.Errorf("saving state of %s: %w", rec.ID, err)
	}
	return nil
}

// writeFile replaces name with data: temporary file, sync, rename, sync of the directory.
func (s *Store) writeFile(name string, data []byte) (err error) {
	f, tmp, err := s.createTemp()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			s.root.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := s.root.Rename(tmp, name); err != nil {
		return fmt.Errorf("renaming %s: %w", tmp, err)
	}
	if err := s.dir.Sync(); err != nil {
		return fmt.Errorf("syncing the state directory: %w", err)
	}
	return nil
}

func (s *Store) createTemp() (*os.File, string, error) {
	for range 10 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, "", err
		}
		name := tmpPrefix + hex.EncodeToString(b[:])
		f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("creating a temporary file: %w", err)
		}
		return f, name, nil
	}
	return nil, "", errors.New("creating a temporary file: no free name")
}

// Delete removes id's record; a record that does not exist is not an error.
func (s *Store) Delete(id spiffeid.ID) error {
	if err := s.remove(fileName(id)); err != nil {
		return fmt.Errorf("deleting state of %s: %w", id, err)
	}
	return nil
}

func (s *Store) remove(name string) error {
	if err := s.root.Remove(name); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if err := s.dir.Sync(); err != nil {
		return fmt.Errorf("syncing the state directory: %w", err)
	}
	return nil
}

// Load reads every record. A file that cannot be used is removed and reported in the errors
// (wrapping ErrCorrupt or ErrWrongKey), so that one bad file costs one identity, not the store.
// Files that are not the store's own (other names) are reported (ErrUnknownFile) and left alone.
func (s *Store) Load() ([]Record, []error) {
	entries, err := s.readDir()
	if err != nil {
		return nil, []error{err}
	}
	var (
		recs []Record
		errs []error
	)
	for _, ent := range entries {
		name := ent.Name()
		if !isRecordName(name) {
			if !strings.HasPrefix(name, tmpPrefix) { // a Save under way
				errs = append(errs, fmt.Errorf("%w: %s (left alone)", ErrUnknownFile, name))
			}
			continue
		}
		rec, err := s.loadFile(name)
		if err == nil {
			recs = append(recs, rec)
			continue
		}
		if rmErr := s.remove(name); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("removing it: %w", rmErr))
		}
		s.logger.Warn("unusable state file removed", "file", name, "err", err)
		errs = append(errs, err)
	}
	return recs, errs
}

func (s *Store) readDir() ([]fs.DirEntry, error) {
	d, err := s.root.Open(".")
	if err != nil {
		return nil, fmt.Errorf("reading the state directory: %w", err)
	}
	defer d.Close()
	entries, err := d.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("reading the state directory: %w", err)
	}
	return entries, nil
}

func isRecordName(name string) bool {
	h, ok := strings.CutSuffix(name, fileSuffix)
	if !ok || len(h) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

func (s *Store) loadFile(name string) (Record, error) {
	fi, err := s.root.Lstat(name)
	if err != nil {
		return Record{}, fmt.Errorf("%w %s: %w", ErrCorrupt, name, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 {
		return Record{}, fmt.Errorf("%w %s: not a regular 0600 file (mode %s)", ErrCorrupt, name, fi.Mode())
	}
	f, err := s.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return Record{}, fmt.Errorf("%w %s: %w", ErrCorrupt, name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return Record{}, fmt.Errorf("%w %s: %w", ErrCorrupt, name, err)
	}
	if len(data) > maxFileSize {
		return Record{}, fmt.Errorf("%w %s: larger than %d bytes", ErrCorrupt, name, maxFileSize)
	}
	rec, err := s.decode(data)
	if err != nil {
		return Record{}, fmt.Errorf("%s: %w", name, err)
	}
	if want := fileName(rec.ID); want != name {
		return Record{}, fmt.Errorf("%w %s: holds %s, whose file is %s", ErrCorrupt, name, rec.ID, want)
	}
	return rec, nil
}

// removeTemporaries deletes what Saves interrupted by a crash left behind.
func (s *Store) removeTemporaries() error {
	entries, err := s.readDir()
	if err != nil {
		return err
	}
	for _, ent := range entries {
		if !strings.HasPrefix(ent.Name(), tmpPrefix) {
			continue
		}
		if err := s.remove(ent.Name()); err != nil {
			return fmt.Errorf("removing a temporary file left by a crash: %w", err)
		}
		s.logger.Info("temporary state file left by an interrupted save removed", "file", ent.Name())
	}
	return nil
}

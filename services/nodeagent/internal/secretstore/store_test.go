package secretstore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func openStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func requireLoad(t testing.TB, s *Store) []Record {
	t.Helper()
	recs, errs := s.Load()
	if len(errs) != 0 {
		t.Fatalf("Load: %v", errs)
	}
	return recs
}

func requireMode(t testing.TB, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Fatalf("%s has mode %04o, want %04o", path, got, want)
	}
}

func TestSaveLoadDeleteRoundTrip(t *testing.T) {
	for name, key := range map[string][]byte{"plain": nil, "encrypted": testKey(t, 1)} {
		t.Run(name, func(t *testing.T) {
			is := newTestIssuer(t)
			dir := filepath.Join(t.TempDir(), "state") // Open creates it
			s := openStore(t, dir, Options{Key: key})
			requireMode(t, dir, 0o700)

			var want []Record
			for i := range 3 {
				rec := is.record(t, testID(i), testPod(i), testPod(i+10))
				if err := s.Save(rec); err != nil {
					t.Fatal(err)
				}
				want = append(want, rec)
				requireMode(t, filepath.Join(dir, fileName(rec.ID)), 0o600)
			}
			// A second Save replaces the first.
			want[1] = is.record(t, testID(1), testPod(1))
			want[1].ResourceNames = nil
			if err := s.Save(want[1]); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(testID(2)); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(testID(2)); err != nil {
				t.Fatalf("deleting a record that is gone: %v, want nil", err)
			}
			want = want[:2]
			want[1].ResourceNames = []string{} // saved empty, read back empty

			// A new Store on the same directory (the restarted agent) reads the same records.
			s.Close()
			got := requireLoad(t, openStore(t, dir, Options{Key: key}))
			sortByID(got)
			sortByID(want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("loaded\n%+v\nwant\n%+v", got, want)
			}
			if files := listDir(t, dir); len(files) != 2 {
				t.Fatalf("directory holds %v, want 2 record files and nothing else", files)
			}
		})
	}
}

func sortByID(recs []Record) {
	slices.SortFunc(recs, func(a, b Record) int { return strings.Compare(a.ID.String(), b.ID.String()) })
}

func listDir(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestOpenRefusesUnsafeDirectories(t *testing.T) {
	base := t.TempDir()
	mkdir := func(name string, mode fs.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	// The target an attacker points a symlink at: it must stay untouched.
	target := mkdir("target", 0o700)
	link := filepath.Join(base, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, dir, want string }{
		{"world readable", mkdir("loose", 0o755), "has mode 0755"},
		{"group readable", mkdir("group", 0o750), "has mode 0750"},
		{"world traversable", mkdir("traverse", 0o701), "has mode 0701"},
		{"symlink", link, "is a symlink"},
		{"not a directory", file, "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(tc.dir, Options{})
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded, want a refusal", tc.dir)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
	if files := listDir(t, target); len(files) != 0 {
		t.Fatalf("the symlink's target was written: %v", files)
	}
	requireMode(t, target, 0o700)
}

func TestOpenRefusesADirectoryOwnedBySomeoneElse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, Options{})
		if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Fatalf("Open of a directory owned by uid %d: %v, want a refusal naming the owner", nobody, err)
		}
		return
	}
	// Without root no directory of another owner can be made: check the decision itself.
	fi, err := os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := *fi.Sys().(*syscall.Stat_t)
	st.Uid = nobody
	if err := checkDir(dir, ownedBy{fi, &st}); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("checkDir of a directory owned by uid %d: %v, want a refusal naming the owner", nobody, err)
	}
}

type ownedBy struct {
	fs.FileInfo
	st *syscall.Stat_t
}

func (o ownedBy) Sys() any { return o.st }

// A crash can leave a temporary file (a Save cut short before its rename) and, on a file system
// that broke its promises, a torn record. Neither may stop the agent or cost more than its own
// identity.
func TestCrashLeftoversAreCleanedAndTornFilesDropped(t *testing.T) {
	is := newTestIssuer(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, dir, Options{})
	good, torn := is.record(t, testID(1), testPod(1)), is.record(t, testID(2), testPod(2))
	for _, r := range []Record{good, torn} {
		if err := s.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	// The crash: a Save of identity 3 stopped mid-write, identity 2's file lost its second half,
	// identity 4's file is garbage, and someone left a file of their own.
	tmp := filepath.Join(dir, tmpPrefix+"0123456789abcdef")
	half, err := os.ReadFile(filepath.Join(dir, fileName(torn.ID)))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		tmp:                                     []byte(`{"version":1,"spiffe_id":"spiffe://cluster.local/ns/shop/sa/svc-3","pay`),
		filepath.Join(dir, fileName(torn.ID)):   half[:len(half)/2],
		filepath.Join(dir, fileName(testID(4))): {0x00, 0xff, 0x13, 0x37},
		filepath.Join(dir, "notes.txt"):         []byte("not the store's"),
	} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s = openStore(t, dir, Options{})
	if _, err := os.Lstat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temporary file left by the crash is still there after Open: %v", err)
	}
	recs, errs := s.Load()
	if len(recs) != 1 || !reflect.DeepEqual(recs[0], good) {
		t.Fatalf("loaded %d records, want only the intact one", len(recs))
	}
	var corrupt, foreign int
	for _, err := range errs {
		switch {
		case errors.Is(err, ErrCorrupt):
			corrupt++
		case errors.Is(err, ErrUnknownFile) && strings.Contains(err.Error(), "notes.txt"):
			foreign++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if corrupt != 2 || foreign != 1 {
		t.Fatalf("errors %v: want 2 corrupt files and 1 foreign file reported", errs)
	}
	files := listDir(t, dir)
	slices.Sort(files)
	if want := []string{fileName(good.ID), "notes.txt"}; !slices.Equal(files, want) {
		t.Fatalf("after Load the directory holds %v, want %v (bad records removed, foreign files kept)", files, want)
	}
	// What is left loads cleanly: the bad files were removed, not reported at every start.
	if recs, errs := s.Load(); len(recs) != 1 || len(errs) != 1 {
		t.Fatalf("second Load: %d records, errors %v; want 1 record and only the foreign file reported", len(recs), errs)
	}
}

func TestLoadRefusesFilesThatAreNotPrivateRegularFiles(t *testing.T) {
	is := newTestIssuer(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, dir, Options{})
	loose, linked := is.record(t, testID(1)), is.record(t, testID(2))
	for _, r := range []Record{loose, linked} {
		if err := s.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, fileName(loose.ID)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Identity 2's file replaced by a link to a record kept elsewhere.
	elsewhere := filepath.Join(dir, "elsewhere")
	if err := os.Rename(filepath.Join(dir, fileName(linked.ID)), elsewhere); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("elsewhere", filepath.Join(dir, fileName(linked.ID))); err != nil {
		t.Fatal(err)
	}
	recs, errs := s.Load()
	if len(recs) != 0 {
		t.Fatalf("loaded %d records, want none", len(recs))
	}
	var corrupt int
	for _, err := range errs {
		if errors.Is(err, ErrCorrupt) && strings.Contains(err.Error(), "not a regular 0600 file") {
			corrupt++
		}
	}
	if corrupt != 2 {
		t.Fatalf("errors %v: want both files refused as not regular 0600 files", errs)
	}
}

func TestConcurrentSavesOfManyIdentities(t *testing.T) {
	is := newTestIssuer(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, dir, Options{Key: testKey(t, 7)})
	const n = 64
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = is.record(t, testID(i), testPod(i))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Save(recs[i])
			if i%4 == 0 {
				errs[i] = errors.Join(errs[i], s.Delete(recs[i].ID))
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := requireLoad(t, s); len(got) != n-n/4 {
		t.Fatalf("loaded %d records, want %d", len(got), n-n/4)
	}
	if files := listDir(t, dir); len(files) != n-n/4 {
		t.Fatalf("directory holds %d files, want %d (no temporary file left)", len(files), n-n/4)
	}
}

func TestSaveRefusesIncompleteRecords(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "state"), Options{})
	is := newTestIssuer(t)
	for name, rec := range map[string]Record{
		"no id":    {Chain: [][]byte{is.ca.Raw}, Key: []byte{1}},
		"no chain": {ID: testID(1), Key: []byte{1}},
		"no key":   {ID: testID(1), Chain: [][]byte{is.ca.Raw}},
	} {
		if err := s.Save(rec); err == nil {
			t.Errorf("%s: Save succeeded, want an error", name)
		}
	}
}

// The size of the state per identity (the figure): ECDSA P-256 key, leaf and CA.
func TestSizeOnDiskPerIdentity(t *testing.T) {
	is := newTestIssuer(t)
	for name, key := range map[string][]byte{"plain": nil, "encrypted": testKey(t, 3)} {
		dir := filepath.Join(t.TempDir(), "state")
		s := openStore(t, dir, Options{Key: key})
		rec := is.record(t, testID(1), testPod(1))
		if err := s.Save(rec); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dir, fileName(rec.ID)))
		if err != nil {
			t.Fatal(err)
		}
		der := len(rec.Chain[0]) + len(rec.Chain[1]) + len(rec.Key)
		t.Logf("%s: %d bytes per identity (DER chain %d+%d bytes, PKCS#8 key %d bytes, 1 pod, 2 resource names)",
			name, fi.Size(), len(rec.Chain[0]), len(rec.Chain[1]), len(rec.Key))
		// base64 in JSON costs a third more than the DER; the rest is names and framing.
		if limit := int64(der*4/3 + 1024); fi.Size() > limit {
			t.Errorf("%s: %d bytes per identity, want at most %d", name, fi.Size(), limit)
		}
	}
}

package secretstore

import (
	"os"
	"path/filepath"
	"testing"
)

// benchIdentities is the figure: the state of an agent holding 1,000 identities. -short
// (the suite runs every benchmark once) takes 100: on a disk, each Save waits for two fsyncs.
func benchIdentities() int {
	if testing.Short() {
		return 100
	}
	return 1000
}

func benchRecords(b *testing.B) []Record {
	b.Helper()
	is := newTestIssuer(b)
	recs := make([]Record, benchIdentities())
	for i := range recs {
		recs[i] = is.record(b, testID(i), testPod(i))
	}
	return recs
}

// BenchmarkSave writes the state of 1,000 identities (100 with -short), next to its ceilings: the same bytes
// written with a bare os.WriteFile (no temporary file, no fsync: not crash-safe), and with a
// WriteFile plus an fsync of the file (durable, but a crash mid-write leaves a torn file). The gap
// between the store and the second is the rename and the directory's fsync.
func BenchmarkSave(b *testing.B) {
	recs := benchRecords(b)
	for _, mode := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", testKey(b, 1)}} {
		b.Run("store/"+mode.name, func(b *testing.B) {
			s := openStore(b, filepath.Join(b.TempDir(), "state"), Options{Key: mode.key})
			for b.Loop() {
				for _, r := range recs {
					if err := s.Save(r); err != nil {
						b.Fatal(err)
					}
				}
			}
			reportPerIdentity(b, len(recs))
		})
	}
	encoded := encodeAll(b, recs)
	b.Run("ceiling/writefile", func(b *testing.B) {
		dir := b.TempDir()
		for b.Loop() {
			for name, data := range encoded {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportPerIdentity(b, len(recs))
	})
	b.Run("ceiling/writefile+fsync", func(b *testing.B) {
		dir := b.TempDir()
		for b.Loop() {
			for name, data := range encoded {
				if err := writeFileSync(filepath.Join(dir, name), data); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportPerIdentity(b, len(recs))
	})
}

// BenchmarkLoad reads the state of 1,000 identities (100 with -short), next to its ceiling: os.ReadDir and a bare
// os.ReadFile of every file (no parsing, no decryption, no checks).
func BenchmarkLoad(b *testing.B) {
	recs := benchRecords(b)
	for _, mode := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", testKey(b, 1)}} {
		b.Run("store/"+mode.name, func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "state")
			s := openStore(b, dir, Options{Key: mode.key})
			for _, r := range recs {
				if err := s.Save(r); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				got, errs := s.Load()
				if len(errs) != 0 || len(got) != len(recs) {
					b.Fatalf("loaded %d records, errors %v", len(got), errs)
				}
			}
			reportPerIdentity(b, len(recs))
			b.ReportMetric(float64(dirBytes(b, dir))/float64(len(recs)), "bytes/identity")
		})
	}
	b.Run("ceiling/readfile", func(b *testing.B) {
		dir := b.TempDir()
		for name, data := range encodeAll(b, recs) {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		for b.Loop() {
			ents, err := os.ReadDir(dir)
			if err != nil {
				b.Fatal(err)
			}
			for _, e := range ents {
				if _, err := os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportPerIdentity(b, len(recs))
	})
}

func encodeAll(b *testing.B, recs []Record) map[string][]byte {
	b.Helper()
	plain := &Store{}
	out := make(map[string][]byte, len(recs))
	for _, r := range recs {
		data, err := plain.encode(r)
		if err != nil {
			b.Fatal(err)
		}
		out[fileName(r.ID)] = data
	}
	return out
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func reportPerIdentity(b *testing.B, n int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/identity")
}

func dirBytes(b *testing.B, dir string) int64 {
	b.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			b.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

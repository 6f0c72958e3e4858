package secretstore

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSealedFilesHoldNoKeyInClear(t *testing.T) {
	is := newTestIssuer(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, dir, Options{Key: testKey(t, 1)})
	rec := is.record(t, testID(1), testPod(1))
	if err := s.Save(rec); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, fileName(rec.ID)))
	if err != nil {
		t.Fatal(err)
	}
	for what, secret := range map[string][]byte{
		"the key":         rec.Key,
		"the key, base64": []byte(base64.StdEncoding.EncodeToString(rec.Key)),
		"the pod uid":     []byte(rec.Pods[0].UID),
	} {
		if bytes.Contains(data, secret) {
			t.Errorf("sealed file contains %s in clear", what)
		}
	}
}

// An attacker who can write the directory but has no key tries to make the agent serve one
// identity's key as another's.
func TestSealedFileMovedToAnotherIdentityIsRefused(t *testing.T) {
	is := newTestIssuer(t)
	key := testKey(t, 1)
	for name, forge := range map[string]struct {
		rewriteID bool
		want      string
	}{
		"renamed only":           {false, "whose file is"},
		"renamed and relabelled": {true, "does not decrypt"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			s := openStore(t, dir, Options{Key: key})
			victim, thief := is.record(t, testID(1), testPod(1)), is.record(t, testID(2), testPod(2))
			for _, r := range []Record{victim, thief} {
				if err := s.Save(r); err != nil {
					t.Fatal(err)
				}
			}
			// The thief's file goes where the victim's record lives.
			data, err := os.ReadFile(filepath.Join(dir, fileName(thief.ID)))
			if err != nil {
				t.Fatal(err)
			}
			if forge.rewriteID {
				var env map[string]any
				if err := json.Unmarshal(data, &env); err != nil {
					t.Fatal(err)
				}
				env["spiffe_id"] = victim.ID.String()
				if data, err = json.Marshal(env); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, fileName(victim.ID)), data, 0o600); err != nil {
				t.Fatal(err)
			}

			recs, errs := s.Load()
			if len(recs) != 1 || recs[0].ID != thief.ID {
				t.Fatalf("loaded %d records, want only the thief's own", len(recs))
			}
			if len(errs) != 1 || !errors.Is(errs[0], ErrCorrupt) || !strings.Contains(errs[0].Error(), forge.want) {
				t.Fatalf("errors %v, want one corrupt file that %q", errs, forge.want)
			}
			if _, err := os.Stat(filepath.Join(dir, fileName(victim.ID))); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("forged file not removed: %v", err)
			}
		})
	}
}

func TestWrongKeyIsReportedAsSuch(t *testing.T) {
	is := newTestIssuer(t)
	keyA, keyB := testKey(t, 1), testKey(t, 100)
	for name, tc := range map[string]struct {
		write, read []byte
		want        string
	}{
		"another key":              {keyA, keyB, "is encrypted with key id " + mustKeyID(t, keyA) + ", the store's key has id " + mustKeyID(t, keyB)},
		"sealed, store has no key": {keyA, nil, "is encrypted (key id " + mustKeyID(t, keyA) + "), but the store has no key"},
		"plain, store has a key":   {nil, keyB, "is stored unencrypted, but the store has a key"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			w := openStore(t, dir, Options{Key: tc.write})
			if err := w.Save(is.record(t, testID(1), testPod(1))); err != nil {
				t.Fatal(err)
			}
			w.Close()
			recs, errs := openStore(t, dir, Options{Key: tc.read}).Load()
			if len(recs) != 0 {
				t.Fatalf("loaded %d records with the wrong key", len(recs))
			}
			if len(errs) != 1 || !errors.Is(errs[0], ErrWrongKey) || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("errors %v, want ErrWrongKey saying %q", errs, tc.want)
			}
		})
	}
}

func mustKeyID(t testing.TB, key []byte) string {
	t.Helper()
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	return s.keyID
}

func TestAlteredSealedContentIsRefused(t *testing.T) {
	is := newTestIssuer(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, dir, Options{Key: testKey(t, 1)})
	rec := is.record(t, testID(1), testPod(1))
	if err := s.Save(rec); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fileName(rec.ID))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	env.Sealed[len(env.Sealed)/2] ^= 1
	if data, err = json.Marshal(env); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if recs, errs := s.Load(); len(recs) != 0 || len(errs) != 1 || !errors.Is(errs[0], ErrCorrupt) {
		t.Fatalf("altered file: %d records, errors %v; want none and one corrupt file", len(recs), errs)
	}
}

func TestOpenRefusesAKeyOfTheWrongSize(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "state"), Options{Key: make([]byte, 16)})
	if err == nil || !strings.Contains(err.Error(), "is 16 bytes, want 32") {
		t.Fatalf("Open with a 16-byte key: %v, want a refusal naming the size", err)
	}
}

func TestReadKeyFile(t *testing.T) {
	key := testKey(t, 9)
	dir := t.TempDir()
	for name, content := range map[string][]byte{
		"raw":    key,
		"hex":    []byte(hex.EncodeToString(key) + "\n"),
		"base64": []byte(" " + base64.StdEncoding.EncodeToString(key) + "\n"),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadKeyFile(path)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: got %x, %v; want the key", name, got, err)
		}
	}
	for name, content := range map[string][]byte{
		"short":      key[:16],
		"short hex":  []byte(hex.EncodeToString(key[:16])),
		"passphrase": []byte("correct horse battery staple\n"),
		"empty":      nil,
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadKeyFile(path); err == nil || !strings.Contains(err.Error(), "openssl rand -hex 32") {
			t.Errorf("%s: %v, want a refusal that says how to make a key", name, err)
		}
	}
	if _, err := ReadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing key file: no error")
	}
}

package local_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/fs"
	"maps"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms/local"
)

func TestRestartResumesEveryStage(t *testing.T) {
	rc := newRotationCA(t)
	forceRetire := func(ctx context.Context) (kms.RotationStatus, error) { return rc.RetireCA(ctx, true) }
	for _, stage := range []struct {
		name string
		step func(context.Context) (kms.RotationStatus, error)
	}{
		{"unrotated", nil},
		{"prepared", func(ctx context.Context) (kms.RotationStatus, error) { return rc.PrepareCA(ctx) }},
		{"activated", func(ctx context.Context) (kms.RotationStatus, error) { return rc.ActivateCA(ctx) }},
		{"retired", forceRetire},
	} {
		if stage.step != nil {
			mustStep(t, stage.step)
			rc.event(t)
		}
		want, wantBundle, wantChain := rc.status(t), rc.bundle(t), signChain(t, rc.CA, 0)
		before := readTree(t, rc.dir)
		rc.CA = newCA(t, rc.config()) // later stages continue on the restarted CA
		checkSameStatus(t, stage.name, rc.status(t), want)
		checkBundle(t, rc.bundle(t), wantBundle.Version, wantBundle.Roots...)
		if got := signChain(t, rc.CA, 0); !sameCert(got[1], wantChain[1]) || !sameCert(got[2], wantChain[2]) {
			t.Errorf("%s: restart changed the signing chain", stage.name)
		}
		if after := readTree(t, rc.dir); !maps.EqualFunc(before, after, bytes.Equal) {
			t.Errorf("%s: restart rewrote the state directory", stage.name)
		}
	}
}

func TestCrashBeforeManifestKeepsTheOldState(t *testing.T) {
	rc := newRotationCA(t)
	root := rc.status(t).Active.Root
	mustStep(t, rc.PrepareCA)
	// What a crash leaves after the first prepare wrote the new CA directory but not the manifest
	// that names it: the manifest written first, naming only the flat CA.
	writeManifest(t, rc.dir, `{"bundle_version": 1, "active": "."}`)
	// And a directory whose writing stopped half way.
	partial := filepath.Join(rc.dir, "ca-1")
	if err := os.Mkdir(partial, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(partial, local.RootKeyFile), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}

	rc.CA = newCA(t, rc.config())
	st := rc.status(t)
	if !st.Active.Root.Equal(root) || st.Next != nil || st.BundleVersion != 1 {
		t.Fatalf("after the crash: status %+v, want the unprepared state at version 1", st)
	}
	checkBundle(t, rc.bundle(t), 1, root)
	if dirs := caDirs(t, rc.dir); len(dirs) != 0 {
		t.Errorf("CA directories %v left behind; keys of roots nobody trusts must go", dirs)
	}
	if st := mustStep(t, rc.PrepareCA); st.BundleVersion != 2 || st.Next == nil {
		t.Errorf("prepare after the crash: status %+v, want a next CA at version 2", st)
	}
}

func TestRetiredCAIsDeleted(t *testing.T) {
	rc := newRotationCA(t)
	mustStep(t, rc.PrepareCA)
	first := caDirs(t, rc.dir)[0]
	mustStep(t, rc.ActivateCA)
	keyPath := filepath.Join(rc.dir, first, local.RootKeyFile)
	rootKey, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	mustStep(t, rc.PrepareCA)
	mustStep(t, rc.ActivateCA)
	// A crash between the manifest and deleting the keys: loading deletes them.
	if err := os.WriteFile(keyPath, rootKey, 0o600); err != nil {
		t.Fatal(err)
	}
	rc.CA = newCA(t, rc.config())
	// first now signs no more: its keys go at once, its certificates when it is retired.
	checkGone(t, filepath.Join(rc.dir, first, local.RootKeyFile), filepath.Join(rc.dir, first, local.IntermediateKeyFile))
	if _, err := os.Stat(filepath.Join(rc.dir, first, local.RootCertFile)); err != nil {
		t.Errorf("a still trusted root's certificate is gone: %v", err)
	}
	mustStep(t, func(ctx context.Context) (kms.RotationStatus, error) { return rc.RetireCA(ctx, true) })
	checkGone(t, filepath.Join(rc.dir, first), filepath.Join(rc.dir, local.RootCertFile))
	if dirs := caDirs(t, rc.dir); len(dirs) != 1 {
		t.Errorf("CA directories %v, want only the active one", dirs)
	}
}

func TestMissingManifestWithCADirectoriesIsRefused(t *testing.T) {
	rc := newRotationCA(t)
	mustStep(t, rc.PrepareCA)
	path := filepath.Join(rc.dir, local.ManifestFile)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	before := readTree(t, rc.dir)
	if _, err := local.New(rc.config()); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v, want one naming %s", err, path)
	}
	if after := readTree(t, rc.dir); !maps.EqualFunc(before, after, bytes.Equal) {
		t.Error("a refused state directory was modified")
	}
}

func TestCorruptManifestIsRefusedByName(t *testing.T) {
	for _, tc := range []struct {
		name, manifest, want string
	}{
		{"garbage", "not json", "invalid character"},
		{"unknown field", `{"bundle_version": 1, "active": ".", "standby": "."}`, "unknown field"},
		{"path outside", `{"bundle_version": 1, "active": "../elsewhere"}`, "not a CA directory name"},
		{"no active", `{"bundle_version": 1}`, "no active CA"},
		{"zero version", `{"bundle_version": 0, "active": "."}`, "bundle_version"},
		{"named twice", `{"bundle_version": 2, "active": ".", "next": "."}`, "named twice"},
		{"no retire time", `{"bundle_version": 2, "active": "ca-1", "previous": [{"dir": "."}]}`, "retire_at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := newRotationCA(t)
			mustStep(t, rc.PrepareCA)
			path := writeManifest(t, rc.dir, tc.manifest)
			before := readTree(t, rc.dir)
			_, err := local.New(rc.config())
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %s and saying %q", err, path, tc.want)
			}
			if after := readTree(t, rc.dir); !maps.EqualFunc(before, after, bytes.Equal) {
				t.Error("a refused state directory was modified")
			}
		})
	}
	t.Run("names a missing CA", func(t *testing.T) {
		rc := newRotationCA(t)
		writeManifest(t, rc.dir, `{"bundle_version": 2, "active": ".", "next": "ca-1"}`)
		want := filepath.Join(rc.dir, "ca-1", local.RootCertFile)
		if _, err := local.New(rc.config()); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want one naming %s", err, want)
		}
	})
}

func TestRotatedFileModes(t *testing.T) {
	rc := newRotationCA(t)
	mustStep(t, rc.PrepareCA)
	dir := caDirs(t, rc.dir)[0]
	want := map[string]os.FileMode{
		local.ManifestFile: 0o600,
		dir:                fs.ModeDir | 0o700,
	}
	for _, name := range []string{".", dir} {
		maps.Copy(want, map[string]os.FileMode{
			filepath.Join(name, local.RootKeyFile):          0o600,
			filepath.Join(name, local.IntermediateKeyFile):  0o600,
			filepath.Join(name, local.RootCertFile):         0o644,
			filepath.Join(name, local.IntermediateCertFile): 0o644,
		})
	}
	got := map[string]os.FileMode{}
	err := filepath.WalkDir(rc.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == rc.dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rc.dir, path)
		got[rel] = info.Mode() & (fs.ModeDir | fs.ModePerm)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("state directory holds %v, want %v (temporary files left behind?)", got, want)
	}
}

func TestIntermediateRenewedAtRuntime(t *testing.T) {
	rc := newRotationCA(t)
	writeShortIntermediate(t, rc.dir)
	rc.CA = newCA(t, rc.config())
	chain, _ := rc.SigningChain(context.Background())
	short, root := chain[0], chain[1]
	rc.run(t)

	renewAt := short.NotAfter.Add(-rotationMaxTTL)
	rc.expectNothingBefore(t, renewAt)
	rc.clk.SetTime(renewAt)
	rc.parked(t)
	chain, _ = rc.SigningChain(context.Background())
	if renewed := chain[0]; sameCert(renewed, short) || !renewed.NotAfter.Equal(root.NotAfter) || renewed.CheckSignatureFrom(root) != nil {
		t.Fatalf("intermediate not renewed until the root's expiry %s (got one until %s)", root.NotAfter, renewed.NotAfter)
	}
	rc.noEvent(t)
	checkBundle(t, rc.bundle(t), 1, root)
	restarted, _ := newCA(t, rc.config()).SigningChain(context.Background())
	if !sameCert(restarted[0], chain[0]) {
		t.Error("renewed intermediate was not persisted")
	}
}

func checkSameStatus(t *testing.T, stage string, got, want kms.RotationStatus) {
	t.Helper()
	same := got.BundleVersion == want.BundleVersion && sameInfo(got.Active, want.Active) &&
		(got.Next == nil) == (want.Next == nil) && (got.Next == nil || sameInfo(*got.Next, *want.Next)) &&
		len(got.Previous) == len(want.Previous) && got.NextStep == want.NextStep && got.NextStepAt.Equal(want.NextStepAt)
	for i := 0; same && i < len(got.Previous); i++ {
		same = sameInfo(got.Previous[i], want.Previous[i])
	}
	if !same {
		t.Errorf("%s: restart changed the rotation state:\n got %+v\nwant %+v", stage, got, want)
	}
}

func sameInfo(a, b kms.CAInfo) bool {
	return sameCert(a.Root, b.Root) && sameCert(a.Intermediate, b.Intermediate) && a.RetireAt.Equal(b.RetireAt)
}

var caDirPattern = regexp.MustCompile(`^ca-[0-9]+$`)

func caDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && caDirPattern.MatchString(e.Name()) {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs
}

func writeManifest(t *testing.T, dir, content string) string {
	t.Helper()
	path := filepath.Join(dir, local.ManifestFile)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// readTree reads every file under dir, keyed by relative path (with its mode, so chmods count).
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	tree := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		tree[rel+" "+info.Mode().String()] = data
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// writeShortIntermediate replaces the flat CA's intermediate by one valid for half the root's life,
// as the CA issued before rotation existed.
func writeShortIntermediate(t *testing.T, dir string) {
	t.Helper()
	root := readPEMFile(t, filepath.Join(dir, local.RootCertFile))
	rootCert, err := x509.ParseCertificate(root)
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := x509.ParsePKCS8PrivateKey(readPEMFile(t, filepath.Join(dir, local.RootKeyFile)))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{Organization: []string{local.Organization}},
		NotBefore: rootCert.NotBefore, NotAfter: rootCert.NotBefore.Add(rootTTL / 2),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
		URIs: []*url.URL{{Scheme: "spiffe", Host: td.Name()}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, rootCert, &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		local.IntermediateKeyFile:  {Type: "PRIVATE KEY", Bytes: keyDER},
		local.IntermediateCertFile: {Type: "CERTIFICATE", Bytes: der},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func readPEMFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	return block.Bytes
}

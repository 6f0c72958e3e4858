package local

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
)

// Files of the state directory. Keys are PKCS#8 PEM, 0600; certificates are PEM, 0644.
const (
	RootCertFile         = "root.pem"
	RootKeyFile          = "root-key.pem"
	IntermediateCertFile = "intermediate.pem"
	IntermediateKeyFile  = "intermediate-key.pem"
)

const (
	dirMode  fs.FileMode = 0o700
	keyMode  fs.FileMode = 0o600
	certMode fs.FileMode = 0o644
)

var stateFiles = []string{RootKeyFile, RootCertFile, IntermediateKeyFile, IntermediateCertFile}

// loadOrCreate returns the CA kept as flat files in cfg.StateDir (the only CA of a state directory
// that has never rotated). An empty directory gets a new CA; one that holds some but not all files
// is refused, because guessing (regenerating the missing half) would silently replace a CA that
// workloads already trust.
func loadOrCreate(cfg Config) (*authority, error) {
	present, err := checkComplete(cfg.StateDir, initialDir)
	if err != nil {
		return nil, err
	}
	if !present {
		return create(cfg)
	}
	return loadSigning(cfg, initialDir)
}

// checkComplete reports whether CA directory name holds its files: all (true), none (false), or
// some, which is an error naming the missing ones.
func checkComplete(stateDir, name string) (bool, error) {
	var present, missing []string
	for _, file := range stateFiles {
		path := filepath.Join(stateDir, name, file)
		_, err := os.Lstat(path)
		switch {
		case err == nil:
			present = append(present, file)
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, path)
		default:
			return false, fmt.Errorf("checking %s: %w", path, err)
		}
	}
	if len(missing) > 0 && len(present) > 0 {
		return false, fmt.Errorf("state is incomplete: %s missing (found %s); restore it from a backup, or move the directory aside to create a new CA",
			strings.Join(missing, ", "), strings.Join(present, ", "))
	}
	return len(present) > 0, nil
}

func create(cfg Config) (*authority, error) {
	auth, files, err := generateCA(cfg, cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	if err := writeFiles(cfg.StateDir, files); err != nil {
		return nil, err
	}
	auth.dir = initialDir
	cfg.Logger.Info("created a new local CA", logkey.StateDir, cfg.StateDir, logkey.TrustDomain, cfg.TrustDomain.String(),
		logkey.RootFingerprint, fingerprint(auth.root), logkey.RootNotAfter, auth.root.NotAfter,
		logkey.IntermediateNotAfter, auth.intermediate.NotAfter)
	return auth, nil
}

// generateCA makes a root valid for RootTTL and an intermediate valid as long, and returns them
// with the files that keep them (keys before their certificates).
func generateCA(cfg Config, now time.Time) (*authority, []stateFile, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating root key: %w", err)
	}
	root, err := issueCA(cfg.TrustDomain, "Portcullis workload root CA", now, now.Add(cfg.RootTTL), rootKey, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("creating root: %w", err)
	}
	auth, interKeyPEM, err := newIntermediate(cfg, now, root, rootKey)
	if err != nil {
		return nil, nil, err
	}
	rootKeyPEM, err := keyPEM(rootKey)
	if err != nil {
		return nil, nil, err
	}
	return auth, []stateFile{
		{RootKeyFile, rootKeyPEM, keyMode},
		{RootCertFile, certPEM(root), certMode},
		{IntermediateKeyFile, interKeyPEM, keyMode},
		{IntermediateCertFile, certPEM(auth.intermediate), certMode},
	}, nil
}

// loadSigning loads CA directory name with both keys and checks that its files form one CA of
// our trust domain. Expiry is the caller's business: a next CA is checked differently from the
// active one.
func loadSigning(cfg Config, name string) (*authority, error) {
	dir := filepath.Join(cfg.StateDir, name)
	root, rootKey, err := readPair(filepath.Join(dir, RootCertFile), filepath.Join(dir, RootKeyFile))
	if err != nil {
		return nil, err
	}
	inter, interKey, err := readPair(filepath.Join(dir, IntermediateCertFile), filepath.Join(dir, IntermediateKeyFile))
	if err != nil {
		return nil, err
	}
	if err := checkRoot(root, cfg.TrustDomain); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, RootCertFile), err)
	}
	if !inter.IsCA {
		return nil, fmt.Errorf("%s: not a CA certificate", filepath.Join(dir, IntermediateCertFile))
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("%s is not signed by %s: %w", filepath.Join(dir, IntermediateCertFile), filepath.Join(dir, RootCertFile), err)
	}
	return &authority{dir: name, root: root, rootKey: rootKey, intermediate: inter, key: interKey}, nil
}

// checkActive refuses an expired active root and warns when it can no longer fit a full leaf.
func checkActive(cfg Config, auth *authority, now time.Time) error {
	if !now.Before(auth.root.NotAfter) {
		return fmt.Errorf("%s: root CA expired at %s; rotate the CA (move the directory aside to create a new one)",
			filepath.Join(cfg.StateDir, auth.dir, RootCertFile), auth.root.NotAfter.UTC().Format(time.RFC3339))
	}
	if auth.root.NotAfter.Sub(now) < cfg.MaxTTL {
		cfg.Logger.Warn("root CA expires within the max ttl: leaves will be cut short; rotate the CA",
			logkey.RootNotAfter, auth.root.NotAfter, logkey.MaxTTL, cfg.MaxTTL.String())
	}
	return nil
}

// renewAt is when auth's intermediate is renewed: once a full max-ttl leaf no longer fits, unless
// the root would cap the new one just as short (then the zero time: never).
func renewAt(auth *authority, maxTTL time.Duration) time.Time {
	if !auth.root.NotAfter.After(auth.intermediate.NotAfter) {
		return time.Time{}
	}
	return auth.intermediate.NotAfter.Add(-maxTTL)
}

// renewIntermediate issues and persists a new intermediate for auth when renewAt has come; it
// returns auth itself when none is due. Only intermediates from before rotation existed (half the
// root's life) or an intermediate of a root that outlives it ever need this.
func renewIntermediate(cfg Config, auth *authority, now time.Time) (*authority, error) {
	if at := renewAt(auth, cfg.MaxTTL); at.IsZero() || now.Before(at) {
		return auth, nil
	}
	renewed, keyPEM, err := newIntermediate(cfg, now, auth.root, auth.rootKey)
	if err != nil {
		return nil, err
	}
	err = writeFiles(filepath.Join(cfg.StateDir, auth.dir), []stateFile{
		{IntermediateKeyFile, keyPEM, keyMode},
		{IntermediateCertFile, certPEM(renewed.intermediate), certMode},
	})
	if err != nil {
		return nil, err
	}
	renewed.dir = auth.dir
	cfg.Logger.Info("issued a new intermediate CA", logkey.RootFingerprint, fingerprint(auth.root),
		logkey.PreviousNotAfter, auth.intermediate.NotAfter, logkey.IntermediateNotAfter, renewed.intermediate.NotAfter)
	return renewed, nil
}

// newIntermediate issues an intermediate valid until the root expires, so that a CA can sign
// through the whole schedule (it stops signing at ⅚ of the root's life) without renewal.
func newIntermediate(cfg Config, now time.Time, root *x509.Certificate, rootKey crypto.Signer) (*authority, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating intermediate key: %w", err)
	}
	inter, err := issueCA(cfg.TrustDomain, "Portcullis workload intermediate CA", now, root.NotAfter, key, root, rootKey)
	if err != nil {
		return nil, nil, fmt.Errorf("creating intermediate: %w", err)
	}
	pemKey, err := keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return &authority{root: root, rootKey: rootKey, intermediate: inter, key: key}, pemKey, nil
}

// issueCA makes a CA certificate for key: self-signed when parent is nil, else an intermediate
// that may sign only leaves (path length 0).
func issueCA(td spiffeid.TrustDomain, name string, now, notAfter time.Time, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{Organization}, CommonName: name},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{spiffeid.RequireFromSegments(td).URL()},
	}
	signer := crypto.Signer(key)
	if parent == nil {
		parent = tmpl
	} else {
		tmpl.MaxPathLenZero = true
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// checkRoot accepts a self-signed CA certificate of trust domain td.
func checkRoot(root *x509.Certificate, td spiffeid.TrustDomain) error {
	if !root.IsCA {
		return errors.New("not a CA certificate")
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		return fmt.Errorf("not self-signed: %w", err)
	}
	if len(root.URIs) != 1 {
		return fmt.Errorf("want exactly one URI SAN (the trust domain), found %d", len(root.URIs))
	}
	id, err := spiffeid.FromURI(root.URIs[0])
	if err != nil {
		return fmt.Errorf("URI SAN: %w", err)
	}
	if id.TrustDomain() != td {
		return fmt.Errorf("CA of trust domain %s, but this kms-adapter serves %s", id.TrustDomain(), td)
	}
	return nil
}

// readPair reads a certificate and its key and checks that they belong together.
func readPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := readCert(certPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, nil, fmt.Errorf("%s does not match the key in %s", certPath, keyPath)
	}
	return cert, key, nil
}

func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}

func readKey(path string) (crypto.Signer, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: private key is accessible to group or others (mode %04o); chmod it 0600", path, info.Mode().Perm())
	}
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: %T cannot sign", path, key)
	}
	return signer, nil
}

func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != typ {
		return nil, fmt.Errorf("%s: no PEM %s block", path, typ)
	}
	return block.Bytes, nil
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func certPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

type stateFile struct {
	name string
	data []byte
	mode fs.FileMode
}

// writeFiles stages every file as a synced temporary file first and renames them into place in
// order (keys before their certificates), so that a crash leaves at worst a pair that load refuses
// by name, never a truncated file.
func writeFiles(dir string, files []stateFile) error {
	var staged []string
	defer func() {
		for _, tmp := range staged {
			_ = os.Remove(tmp) // no-op once renamed
		}
	}()
	for _, f := range files {
		tmp, err := stage(dir, f)
		if err != nil {
			return err
		}
		staged = append(staged, tmp)
	}
	for i, f := range files {
		if err := os.Rename(staged[i], filepath.Join(dir, f.name)); err != nil {
			return fmt.Errorf("writing %s: %w", filepath.Join(dir, f.name), err)
		}
	}
	return syncDir(dir)
}

// syncDir makes renames, creations and removals in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

func stage(dir string, f stateFile) (string, error) {
	tmp, err := os.CreateTemp(dir, "."+f.name+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", filepath.Join(dir, f.name), err)
	}
	err = errors.Join(tmp.Chmod(f.mode), writeAll(tmp, f.data), tmp.Sync(), tmp.Close())
	if err != nil {
		_ = os.Remove(tmp.Name())
		return "", fmt.Errorf("writing %s: %w", filepath.Join(dir, f.name), err)
	}
	return tmp.Name(), nil
}

func writeAll(f *os.File, data []byte) error {
	_, err := f.Write(data)
	return err
}

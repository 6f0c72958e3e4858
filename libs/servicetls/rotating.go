package servicetls

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Rotating is a Source whose certificate lives only in memory and is replaced by its owner (a node
// agent that obtains its certificate by node attestation): the private key never touches disk.
// The control-plane CA bundle comes from a file (a ConfigMap volume in a cluster) and is re-read
// when the file changes, so a CA rotation reaches it without a restart. Safe for concurrent use.
type Rotating struct {
	caFile   string
	interval time.Duration

	mu        sync.Mutex
	svid      *x509svid.SVID
	bundle    *x509bundle.Bundle
	caStamp   time.Time
	checked   time.Time
	lastError error
}

// NewRotating starts from a first certificate and the CA bundle in caFile.
func NewRotating(first *x509svid.SVID, caFile string) (*Rotating, error) {
	if first == nil || len(first.Certificates) == 0 || first.PrivateKey == nil {
		return nil, errors.New("rotating identity: no certificate")
	}
	r := &Rotating{caFile: caFile, interval: reloadCheckInterval, svid: first}
	bundle, stamp, err := loadBundle(first.ID.TrustDomain(), caFile)
	if err != nil {
		return nil, err
	}
	r.bundle, r.caStamp, r.checked = bundle, stamp, time.Now()
	return r, nil
}

func loadBundle(td spiffeid.TrustDomain, path string) (*x509bundle.Bundle, time.Time, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("reading %s: %w", path, err)
	}
	b, err := x509bundle.Load(td, path)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("loading control-plane CA %s: %w", path, err)
	}
	return b, fi.ModTime(), nil
}

// Identity is the Identity served by r.
func (r *Rotating) Identity() *Identity { return FromSource(r.Current().ID, r) }

// Current is the certificate in use.
func (r *Rotating) Current() *x509svid.SVID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.svid
}

// Set replaces the certificate; the next handshake uses it. A certificate for another ID is
// refused: an identity never changes its name.
func (r *Rotating) Set(svid *x509svid.SVID) error {
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return errors.New("rotating identity: no certificate")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if svid.ID != r.svid.ID {
		return fmt.Errorf("new certificate names %s, not %s", svid.ID, r.svid.ID)
	}
	r.svid = svid
	return nil
}

// refreshBundle re-reads the CA file if it changed, at most once per interval; a file that does
// not load keeps the last good bundle.
func (r *Rotating) refreshBundle() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < r.interval {
		return
	}
	r.checked = time.Now()
	if fi, err := os.Stat(r.caFile); err != nil || fi.ModTime().Equal(r.caStamp) {
		return
	}
	bundle, stamp, err := loadBundle(r.svid.ID.TrustDomain(), r.caFile)
	if err != nil {
		r.lastError = err
		return
	}
	r.bundle, r.caStamp, r.lastError = bundle, stamp, nil
}

// GetX509SVID implements x509svid.Source.
func (r *Rotating) GetX509SVID() (*x509svid.SVID, error) { return r.Current(), nil }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (r *Rotating) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	r.refreshBundle()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bundle.GetX509BundleForTrustDomain(td)
}

// ReloadError is the reason the last change to the CA file was not taken, or nil.
func (r *Rotating) ReloadError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastError
}

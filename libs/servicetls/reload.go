package servicetls

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// reloadCheckInterval bounds how often a handshake looks at the files' modification times.
const reloadCheckInterval = 5 * time.Second

// fileSource serves a service's certificate and CA bundle from its files, re-reading them when
// they change, so that certificates rotated on disk (e.g. by cert-manager) are used by the next
// handshake without a restart. A change that does not load, or that names another identity, is
// ignored and the last good files stay in use. It implements x509svid.Source and
// x509bundle.Source and is safe for concurrent use.
type fileSource struct {
	files    Files
	interval time.Duration

	mu        sync.Mutex
	svid      *x509svid.SVID
	bundle    *x509bundle.Bundle
	stamp     [3]time.Time // modification times of cert, key and CA when last loaded
	checked   time.Time
	lastError error
}

func newFileSource(f Files) (*fileSource, error) {
	s := &fileSource{files: f, interval: reloadCheckInterval}
	svid, bundle, stamp, err := s.load()
	if err != nil {
		return nil, err
	}
	s.svid, s.bundle, s.stamp, s.checked = svid, bundle, stamp, time.Now()
	return s, nil
}

func (s *fileSource) load() (*x509svid.SVID, *x509bundle.Bundle, [3]time.Time, error) {
	var stamp [3]time.Time
	for i, p := range []string{s.files.CertFile, s.files.KeyFile, s.files.CAFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, nil, stamp, fmt.Errorf("reading %s: %w", p, err)
		}
		stamp[i] = fi.ModTime()
	}
	svid, err := x509svid.Load(s.files.CertFile, s.files.KeyFile)
	if err != nil {
		return nil, nil, stamp, fmt.Errorf("loading service certificate %s: %w", s.files.CertFile, err)
	}
	bundle, err := x509bundle.Load(svid.ID.TrustDomain(), s.files.CAFile)
	if err != nil {
		return nil, nil, stamp, fmt.Errorf("loading control-plane CA %s: %w", s.files.CAFile, err)
	}
	return svid, bundle, stamp, nil
}

// refresh reloads the files if they changed since the last look, at most once per interval.
func (s *fileSource) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.checked) < s.interval {
		return
	}
	s.checked = time.Now()
	changed := false
	for i, p := range []string{s.files.CertFile, s.files.KeyFile, s.files.CAFile} {
		if fi, err := os.Stat(p); err == nil && !fi.ModTime().Equal(s.stamp[i]) {
			changed = true
		}
	}
	if !changed {
		return
	}
	svid, bundle, stamp, err := s.load()
	switch {
	case err != nil:
		s.lastError = err // e.g. the cert is written before its key: retried at the next look
	case svid.ID != s.svid.ID:
		s.lastError = fmt.Errorf("new certificate names %s, not %s; keeping the current one", svid.ID, s.svid.ID)
	default:
		s.svid, s.bundle, s.stamp, s.lastError = svid, bundle, stamp, nil
	}
}

// GetX509SVID implements x509svid.Source.
func (s *fileSource) GetX509SVID() (*x509svid.SVID, error) {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *fileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundle.GetX509BundleForTrustDomain(td)
}

// ReloadError is the reason the last change to the files was not taken, or nil.
func (s *fileSource) ReloadError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastError
}

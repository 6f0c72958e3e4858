package attest

import (
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

// caCheckInterval bounds how often signing looks at the CA files' modification times.
const caCheckInterval = 5 * time.Second

// CAFiles is the control-plane CA read from its certificate and key files (the bootstrap's
// Secret, mounted into citadel). A changed pair (a CA rotation, or kubelet updating the Secret
// volume) is used from the next signature on; a pair that does not load keeps the last good one.
// It is safe for concurrent use.
type CAFiles struct {
	td                spiffeid.TrustDomain
	certFile, keyFile string
	interval          time.Duration

	mu      sync.Mutex
	ca      *servicetls.BootstrapCA
	stamp   [2]time.Time
	checked time.Time
}

// LoadCAFiles reads the CA; it fails if the files do not hold a CA certificate and its key.
func LoadCAFiles(td spiffeid.TrustDomain, certFile, keyFile string) (*CAFiles, error) {
	c := &CAFiles{td: td, certFile: certFile, keyFile: keyFile, interval: caCheckInterval}
	ca, stamp, err := c.load()
	if err != nil {
		return nil, err
	}
	c.ca, c.stamp, c.checked = ca, stamp, time.Now()
	return c, nil
}

func (c *CAFiles) load() (*servicetls.BootstrapCA, [2]time.Time, error) {
	var stamp [2]time.Time
	var data [2][]byte
	for i, p := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, stamp, fmt.Errorf("reading control-plane CA: %w", err)
		}
		stamp[i] = fi.ModTime()
		if data[i], err = os.ReadFile(p); err != nil {
			return nil, stamp, fmt.Errorf("reading control-plane CA: %w", err)
		}
	}
	ca, err := servicetls.LoadBootstrapCA(c.td, data[0], data[1])
	if err != nil {
		return nil, stamp, fmt.Errorf("%s, %s: %w", c.certFile, c.keyFile, err)
	}
	return ca, stamp, nil
}

func (c *CAFiles) current() *servicetls.BootstrapCA {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) < c.interval {
		return c.ca
	}
	c.checked = time.Now()
	changed := false
	for i, p := range []string{c.certFile, c.keyFile} {
		if fi, err := os.Stat(p); err == nil && !fi.ModTime().Equal(c.stamp[i]) {
			changed = true
		}
	}
	if changed {
		if ca, stamp, err := c.load(); err == nil {
			c.ca, c.stamp = ca, stamp
		}
	}
	return c.ca
}

// Certificate is the CA certificate in use.
func (c *CAFiles) Certificate() *x509.Certificate { return c.current().Certificate() }

// Sign implements Signer.
func (c *CAFiles) Sign(id spiffeid.ID, csr *x509.CertificateRequest, validity time.Duration) ([]*x509.Certificate, error) {
	leaf, err := c.current().Sign(id, csr.PublicKey, validity)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf}, nil
}

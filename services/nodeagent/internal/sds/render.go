package sds

import (
	"crypto/x509"
	"slices"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/secrets"
)

// maxRenderedCerts bounds the rendered-certificate cache: past it the cache starts over, so
// identities that left the node do not accumulate.
const maxRenderedCerts = 4096

// renderCache remembers rendered resources, so that a change pushed to thousands of streams is
// rendered (PEM, digest, protobuf) once rather than once per stream. Entries are keyed by the
// very objects the secrets store returned: a bundle by its certificate pointers, a certificate
// by its pointer and the resource name it is served under. Safe for concurrent use.
type renderCache struct {
	mu    sync.Mutex
	roots []*x509.Certificate
	ca    built
	certs map[certKey]renderedCert
}

type certKey struct {
	id   spiffeid.ID
	name string
}

type renderedCert struct {
	cert *secrets.Certificate
	res  built
}

func (c *renderCache) bundle(roots []*x509.Certificate, render func() (built, error)) (built, error) {
	c.mu.Lock()
	if c.ca.res != nil && slices.Equal(c.roots, roots) {
		b := c.ca
		c.mu.Unlock()
		return b, nil
	}
	c.mu.Unlock()
	b, err := render()
	if err != nil {
		return built{}, err
	}
	c.mu.Lock()
	c.roots, c.ca = roots, b
	c.mu.Unlock()
	return b, nil
}

func (c *renderCache) certificate(name string, cert *secrets.Certificate, render func() (built, error)) (built, error) {
	k := certKey{cert.ID, name}
	c.mu.Lock()
	if r, ok := c.certs[k]; ok && r.cert == cert {
		c.mu.Unlock()
		return r.res, nil
	}
	c.mu.Unlock()
	b, err := render()
	if err != nil {
		return built{}, err
	}
	c.mu.Lock()
	if c.certs == nil || len(c.certs) >= maxRenderedCerts {
		c.certs = map[certKey]renderedCert{}
	}
	c.certs[k] = renderedCert{cert, b}
	c.mu.Unlock()
	return b, nil
}

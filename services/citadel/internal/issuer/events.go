package issuer

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// Forget drops the cached certificates of id, so that a forced rotation or a revocation is never
// answered with a certificate issued before it. It returns how many were dropped.
func (i *Issuer) Forget(id spiffeid.ID) int { return i.cache.Drop(id.String()) }

// ForgetAll drops every cached certificate: after a CA activation, cached leaves chain to the CA
// that no longer signs, and agents that re-issue must get leaves of the new one.
func (i *Issuer) ForgetAll() int { return i.cache.Drop("") }

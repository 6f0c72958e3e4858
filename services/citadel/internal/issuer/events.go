package issuer

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Forget drops the cached certificates of id, so that a forced rotation or a revocation is never
// answered with a certificate issued before it. It returns how many were dropped.
func (i *Issuer) Forget(id spiffeid.ID) int { return i.cache.Drop(id.String()) }

// ForgetAll drops every cached certificate: after a CA activation, cached leaves chain to the CA
// that no longer signs, and agents that re-issue must get leaves of the new one.
func (i *Issuer) ForgetAll() int { return i.cache.Drop("") }

// Revoke drops id's cached certificates and refuses, from now on, renewal proofs made with any
// certificate of id issued before `before`.
func (i *Issuer) Revoke(id spiffeid.ID, before time.Time) int {
	i.revokedMu.Lock()
	if cur, ok := i.revoked[id]; !ok || before.After(cur) {
		i.revoked[id] = before
	}
	i.revokedMu.Unlock()
	return i.Forget(id)
}

func (i *Issuer) revokedBefore(id spiffeid.ID) (time.Time, bool) {
	i.revokedMu.RLock()
	defer i.revokedMu.RUnlock()
	t, ok := i.revoked[id]
	return t, ok
}

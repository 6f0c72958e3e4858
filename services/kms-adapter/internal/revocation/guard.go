package revocation

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// Guard is a kms.Backend decorator that records, at signing, the certificates of revoked
// identities that their NotBefore alone would count as revoked (see the package comment).
type Guard struct {
	kms.Backend
	store *Store
}

// Wrap records in store what b signs for revoked identities.
func Wrap(b kms.Backend, store *Store) *Guard { return &Guard{Backend: b, store: store} }

// Sign implements kms.Backend. The revocation is looked up before signing: a revocation that
// arrives while the backend signs is not recorded against, so that certificate counts as revoked
// (it may have been signed before the revocation). A certificate whose record cannot be written
// is not returned: its holder could not renew it.
func (g *Guard) Sign(ctx context.Context, req kms.SignRequest) ([]*x509.Certificate, error) {
	rev, revoked := g.store.Lookup(req.ID)
	chain, err := g.Backend.Sign(ctx, req)
	if err != nil || !revoked || len(chain) == 0 || chain[0].NotBefore.After(rev.Cutoff) {
		return chain, err
	}
	if err := g.store.recordReissue(req.ID, rev.RevokedAt, chain[0].SerialNumber); err != nil {
		return nil, fmt.Errorf("%w: recording a certificate signed after the revocation of %s: %v", kms.ErrUnavailable, req.ID, err)
	}
	return chain, nil
}

package issuer

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/certcache"
)

// ttlSlack tolerates clocks of citadel and kms-adapter that disagree a little when deciding whether
// a cached certificate outlives what the request asked for.
const ttlSlack = time.Minute

// sign returns a chain for (id, the CSR's key) valid for about ttl: a cached one while it is fresh,
// else one kms-adapter signs. Concurrent misses for the same key share one kms-adapter call.
func (i *Issuer) sign(ctx context.Context, node string, id spiffeid.ID, csr *x509.CertificateRequest, ttl time.Duration) (Result, error) {
	key := certcache.NewKey(id.String(), csr.RawSubjectPublicKeyInfo)
	if e, ok := i.cached(key, ttl); ok {
		i.cfg.Metrics.CacheHits.Inc()
		return Result{Identity: id, Chain: e.Chain, Cached: true}, nil
	}
	i.cfg.Metrics.CacheMisses.Inc()
	if !i.limits.allow(node, i.cfg.Clock.Now()) {
		return Result{}, fmt.Errorf("%w: node %q may cause %.0f signatures per second (burst %d); retry with backoff",
			ErrRateLimited, node, i.cfg.NodeSignRate, i.cfg.NodeSignBurst)
	}

	flightKey := key.Identity + "\x00" + string(key.SPKI[:]) + "\x00" + strconv.FormatInt(int64(ttl), 10)
	ch := i.flight.DoChan(flightKey, func() (any, error) {
		// A flight that ended between our cache lookup and joining this one has filled the cache.
		if e, ok := i.cached(key, ttl); ok {
			return e, nil
		}
		e, err := i.signWithKMS(ctx, id, csr, ttl)
		if err != nil {
			return nil, err
		}
		i.cache.Put(key, e)
		return e, nil
	})
	var r singleflight.Result
	select {
	case <-ctx.Done():
		return Result{}, fmt.Errorf("waiting for kms-adapter: %w", ctx.Err())
	case r = <-ch:
	}
	if r.Err != nil {
		// Serving a certificate that is past half life but still valid beats refusing while
		// kms-adapter is down: the workload keeps a working identity and its agent retries.
		if e, ok := i.cache.Get(key); ok && errors.Is(r.Err, ErrKMSUnavailable) {
			i.cfg.Logger.Warn("kms-adapter unavailable, serving a cached certificate past half life",
				"identity", id.String(), "not_after", e.NotAfter, "err", r.Err)
			return Result{Identity: id, Chain: e.Chain, Cached: true}, nil
		}
		return Result{}, r.Err
	}
	return Result{Identity: id, Chain: r.Val.(certcache.Entry).Chain}, nil
}

// cached returns a cache entry that is fresh and does not outlive the requested ttl by much (a
// caller that asks for a short-lived certificate must not get a longer-lived one).
func (i *Issuer) cached(key certcache.Key, ttl time.Duration) (certcache.Entry, bool) {
	e, ok := i.cache.Get(key)
	if !ok {
		return certcache.Entry{}, false
	}
	now := i.cfg.Clock.Now()
	if !e.FreshAt(now) || e.NotAfter.Sub(now) > ttl+ttlSlack {
		return certcache.Entry{}, false
	}
	return e, true
}

func (i *Issuer) signWithKMS(ctx context.Context, id spiffeid.ID, csr *x509.CertificateRequest, ttl time.Duration) (certcache.Entry, error) {
	// Detached from the requester's context: other requests may be waiting on this call.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), i.cfg.SignTimeout)
	defer cancel()
	start := time.Now()
	resp, err := i.cfg.KMS.SignCertificate(ctx, &kmsv1.SignCertificateRequest{
		Csr:        csr.Raw,
		SpiffeId:   id.String(),
		TtlSeconds: int64(ttl / time.Second),
	})
	i.cfg.Metrics.KMSSignDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		switch st := status.Convert(err); st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return certcache.Entry{}, fmt.Errorf("%w: %s", ErrKMSUnavailable, st.Message())
		default:
			return certcache.Entry{}, fmt.Errorf("%w: kms-adapter: %s: %s", ErrSigning, st.Code(), st.Message())
		}
	}
	return checkChain(resp.GetCertChain(), id, csr)
}

// checkChain makes sure kms-adapter certified what was asked (the identity and the CSR's key)
// before the chain is cached and handed out, and converts it to PEM.
func checkChain(chain [][]byte, id spiffeid.ID, csr *x509.CertificateRequest) (certcache.Entry, error) {
	if len(chain) == 0 {
		return certcache.Entry{}, fmt.Errorf("%w: kms-adapter returned an empty chain", ErrSigning)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return certcache.Entry{}, fmt.Errorf("%w: kms-adapter returned an unparsable leaf: %v", ErrSigning, err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		return certcache.Entry{}, fmt.Errorf("%w: kms-adapter returned a leaf for %v, want %s", ErrSigning, leaf.URIs, id)
	}
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
		return certcache.Entry{}, fmt.Errorf("%w: kms-adapter returned a leaf for another public key", ErrSigning)
	}
	e := certcache.Entry{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Chain: make([]string, len(chain))}
	for n, der := range chain {
		e.Chain[n] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	return e, nil
}

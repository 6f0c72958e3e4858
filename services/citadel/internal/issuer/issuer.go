// Package issuer decides whether a node agent may have a certificate for a workload, and gets it
// one: from the cache when a fresh one exists for the same key, else from kms-adapter.
//
// The decision is a pipeline, each step failing with its own sentinel error (wrapped with the
// detail an operator needs); the gRPC edge maps the sentinels to status codes:
//
//  1. the caller must be a node agent (ErrNotNodeAgent);
//  2. the workload token must verify (ErrUnauthenticated); without one, the agent's statement of
//     the pod it attested (libs/attestedpod) or a renewal proof (libs/renewalproof) stands in;
//  3. the pod must exist, with the token's (or statement's) UID, on the caller's node, under the
//     token's service account (ErrForbidden; ErrPodsNotSynced before the first pod list arrived);
//  4. the CSR must be at most MaxCSRBytes, parse and carry an acceptable key (ErrInvalidCSR); it is
//     parsed only once the caller is authenticated (a renewal proof is checked on its bytes);
//  5. the identity is spiffe://<td>/ns/<ns>/sa/<sa>, whatever names the CSR asks for;
//  6. cache, then kms-adapter (ErrKMSUnavailable, ErrSigning).
package issuer

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/utils/clock"

	"github.com/portcullis-mesh/portcullis/libs/attestedpod"
	"github.com/portcullis-mesh/portcullis/libs/expirycache"
	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/certcache"
	"github.com/portcullis-mesh/portcullis/services/citadel/internal/metrics"
)

// Sentinel errors of the pipeline, one per kind of refusal.
var (
	ErrNotNodeAgent    = errors.New("caller is not a node agent")
	ErrUnauthenticated = errors.New("workload token rejected")
	ErrForbidden       = errors.New("not authorized")
	ErrPodsNotSynced   = errors.New("pods not yet synced from mcp-sync")
	ErrInvalidCSR      = errors.New("invalid csr")
	ErrInvalidTTL      = errors.New("invalid validity duration")
	ErrKMSUnavailable  = errors.New("kms-adapter unavailable")
	ErrSigning         = errors.New("signing failed")
	ErrRateLimited     = errors.New("signing rate limit of the node exceeded")
)

// Pods is the cluster's pod view. Get and Synced must be safe for concurrent use; Synced is closed
// once the first full pod list has arrived. mcpclient.Pods satisfies it.
type Pods interface {
	Get(key string) (*mcpv1.Pod, bool)
	// Find returns a pod for which match is true (used by renewals, which name no pod).
	Find(match func(*mcpv1.Pod) bool) (*mcpv1.Pod, bool)
	Synced() <-chan struct{}
}

// TokenVerifier verifies workload tokens; *workloadtoken.Verifier satisfies it. Its errors are
// shown to the caller, so they must say why a token was refused without leaking secrets.
type TokenVerifier interface {
	Verify(raw string) (workloadtoken.Workload, error)
}

// KMS is the part of kms-adapter's API the issuer uses; kmsv1.KeyManagementServiceClient
// satisfies it.
type KMS interface {
	SignCertificate(ctx context.Context, in *kmsv1.SignCertificateRequest, opts ...grpc.CallOption) (*kmsv1.SignCertificateResponse, error)
}

// Revocations judges the certificate of a renewal proof against kms-adapter's revocation state;
// *revocations.Source satisfies it. It must be safe for concurrent use.
type Revocations interface {
	// Loaded is closed once the state has been loaded; no proof is granted before.
	Loaded() <-chan struct{}
	// Revoked reports whether leaf, a certificate of id, is revoked; an error means it could not
	// tell (kms-adapter unreachable when a refetch was needed).
	Revoked(ctx context.Context, id spiffeid.ID, leaf *x509.Certificate) (bool, error)
}

// Config carries the issuer's dependencies and policy.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Pods        Pods
	Verifier    TokenVerifier
	KMS         KMS
	Revocations Revocations
	// Roots returns the workload trust bundle; renewal proofs must chain to it.
	Roots      func(ctx context.Context) ([]*x509.Certificate, error)
	DefaultTTL time.Duration // used when a request asks for no particular validity
	MaxTTL     time.Duration // longer requests are clamped to it
	CacheSize  int
	// CSRCacheBytes bounds the verified CSRs remembered (see verifiedCSRSize); 0 means 64 MiB.
	CSRCacheBytes int64
	// SyncWait bounds how long a request waits for the first pod list (the request's own deadline
	// bounds it too); 0 means 5s.
	SyncWait time.Duration
	// SignTimeout bounds one kms-adapter call; 0 means 30s. The call is shared by coalesced
	// requests, so it does not end with the first requester's context.
	SignTimeout time.Duration
	// NodeSignRate and NodeSignBurst bound the kms-adapter signatures one node may cause (cache
	// hits are free): a node cannot flood the CA, and a fleet-wide rotation that arrives faster
	// than the agents' jitter spreads it is refused with a clear error the agents back off on.
	// A zero rate means no limit.
	NodeSignRate  float64
	NodeSignBurst int
	// JWTKMS signs JWT-SVIDs; nil disables MintJWTSVID (ErrJWTDisabled). JWTDefaultTTL is the
	// lifetime of a token whose request asks for none, JWTMaxTTL the longest (longer requests
	// are clamped). Mints are limited per node like signatures, in a bucket of their own so that
	// JWTs never starve certificate renewals.
	JWTKMS        JWTKMS
	JWTDefaultTTL time.Duration
	JWTMaxTTL     time.Duration
	Clock         clock.Clock
	Metrics       *metrics.Metrics
	Logger        *slog.Logger
}

// Issuer runs the pipeline. It is safe for concurrent use.
type Issuer struct {
	cfg       Config
	limits    *nodeLimits
	jwtLimits *nodeLimits
	cache     *certcache.Cache
	csrs      *expirycache.Cache[[sha256.Size]byte, *x509.CertificateRequest]
	flight    singleflight.Group
}

// New builds an issuer.
func New(cfg Config) (*Issuer, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("issuer: trust domain is required")
	case cfg.Pods == nil || cfg.Verifier == nil || cfg.KMS == nil || cfg.Revocations == nil || cfg.Roots == nil || cfg.Clock == nil ||
		cfg.Metrics == nil || cfg.Logger == nil:
		return nil, errors.New("issuer: pods, verifier, kms, revocations, roots, clock, metrics and logger are required")
	case cfg.DefaultTTL <= 0 || cfg.MaxTTL < cfg.DefaultTTL:
		return nil, fmt.Errorf("issuer: need 0 < default ttl (%s) <= max ttl (%s)", cfg.DefaultTTL, cfg.MaxTTL)
	case cfg.CacheSize <= 0:
		return nil, errors.New("issuer: cache size must be positive")
	case cfg.JWTKMS != nil && (cfg.JWTDefaultTTL <= 0 || cfg.JWTMaxTTL < cfg.JWTDefaultTTL):
		return nil, fmt.Errorf("issuer: need 0 < jwt default ttl (%s) <= jwt max ttl (%s)", cfg.JWTDefaultTTL, cfg.JWTMaxTTL)
	}
	if cfg.SyncWait == 0 {
		cfg.SyncWait = 5 * time.Second
	}
	if cfg.CSRCacheBytes == 0 {
		cfg.CSRCacheBytes = defaultVerifiedCSRBytes
	}
	if cfg.SignTimeout == 0 {
		cfg.SignTimeout = 30 * time.Second
	}
	return &Issuer{
		cfg:       cfg,
		limits:    newNodeLimits(cfg.NodeSignRate, cfg.NodeSignBurst),
		jwtLimits: newNodeLimits(cfg.NodeSignRate, cfg.NodeSignBurst),
		cache:     certcache.New(cfg.CacheSize, cfg.Clock),
		csrs:      expirycache.NewWithBytes[[sha256.Size]byte](cfg.CacheSize, cfg.CSRCacheBytes, verifiedCSRSize),
	}, nil
}

// VerifiedCSRBytes is what the cache of verified CSRs holds, by the measure that bounds it.
func (i *Issuer) VerifiedCSRBytes() int64 { return i.csrs.Bytes() }

// Request is one CreateCertificate call.
type Request struct {
	Caller spiffeid.ID   // the verified control-plane identity of the caller
	Token  string        // the workload token, "" if none was sent
	CSR    string        // PEM
	TTL    time.Duration // requested validity; 0 means the default
	// Renewal is the request's metadata; without a token it may carry a renewal proof
	// (libs/renewalproof) by the key of the identity's current certificate.
	Renewal *structpb.Struct
}

// Result is an issued chain.
type Result struct {
	Identity spiffeid.ID
	Chain    []string // PEM, leaf first, root last
	Cached   bool
}

// Issue runs the pipeline for one request.
func (i *Issuer) Issue(ctx context.Context, req Request) (Result, error) {
	m := i.cfg.Metrics
	m.CSRCount.Inc()

	node, ok := servicetls.NodeOf(req.Caller)
	if !ok {
		m.AuthorizationFailures.Inc()
		return Result{}, fmt.Errorf("%w: %s", ErrNotNodeAgent, servicetls.Describe(req.Caller))
	}
	var (
		id  spiffeid.ID
		csr *x509.CertificateRequest
		err error
	)
	if req.Token == "" && renewalproof.Present(req.Renewal) && !attestedpod.Present(req.Renewal) {
		// The proof signs the CSR's bytes, so it is checked on them before the CSR is parsed or
		// remembered: a caller that cannot prove anything costs no more than a PEM decode.
		der, err := decodeCSR(req.CSR)
		if err != nil {
			m.CSRParsingErrors.Inc()
			return Result{}, err
		}
		if id, err = i.authorizeRenewal(ctx, node, req.Renewal, der); err != nil {
			countRefusal(m, err)
			return Result{}, err
		}
		if csr, err = i.checkCSR(der); err != nil {
			m.CSRParsingErrors.Inc()
			return Result{}, err
		}
	} else {
		if id, err = i.authorizeWorkload(ctx, node, req.Token, req.Renewal); err != nil {
			return Result{}, err
		}
		if csr, err = i.parseCSR(req.CSR); err != nil {
			return Result{}, err
		}
	}
	ttl, err := i.ttl(req.TTL)
	if err != nil {
		return Result{}, err
	}
	res, err := i.sign(ctx, node, id, csr, ttl)
	if err != nil {
		m.CSRSignErrors.Inc()
		return Result{}, err
	}
	m.SuccessCertIssuance.Inc()
	return res, nil
}

// AuthorizeWorkload is the decision every credential citadel mints for a workload goes through
// (certificates and JWT-SVIDs): caller must be a node agent; the workload is named by its token,
// or without one by the agent's attested-pod statement in md; the pod must exist, with that UID
// and service account, on the caller's node. It returns the workload's SPIFFE ID. Refusals are
// counted. Renewal proofs are not accepted here: they prove possession of a certificate's key,
// which only a certificate request (Issue) can show.
func (i *Issuer) AuthorizeWorkload(ctx context.Context, caller spiffeid.ID, token string, md *structpb.Struct) (spiffeid.ID, error) {
	node, ok := servicetls.NodeOf(caller)
	if !ok {
		i.cfg.Metrics.AuthorizationFailures.Inc()
		return spiffeid.ID{}, fmt.Errorf("%w: %s", ErrNotNodeAgent, servicetls.Describe(caller))
	}
	return i.authorizeWorkload(ctx, node, token, md)
}

func (i *Issuer) authorizeWorkload(ctx context.Context, node, token string, md *structpb.Struct) (spiffeid.ID, error) {
	m := i.cfg.Metrics
	if token == "" && attestedpod.Present(md) {
		if renewalproof.Present(md) {
			m.AuthenticationFailures.Inc()
			return spiffeid.ID{}, fmt.Errorf("%w: a request carries an attested pod or a renewal proof, not both", ErrUnauthenticated)
		}
		id, err := i.authorizeAttestedPod(ctx, node, md)
		if err != nil {
			countRefusal(m, err)
		}
		return id, err
	}
	w, err := i.verifyToken(token)
	if err != nil {
		m.AuthenticationFailures.Inc()
		return spiffeid.ID{}, err
	}
	if err := i.checkPod(ctx, node, w); err != nil {
		countRefusal(m, err)
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromSegments(i.cfg.TrustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		m.AuthorizationFailures.Inc()
		return spiffeid.ID{}, fmt.Errorf("%w: %s has no valid spiffe id: %v", ErrForbidden, w, err)
	}
	return id, nil
}

// parseCSR decodes and checks a PEM CSR, counting a bad one.
func (i *Issuer) parseCSR(pemCSR string) (*x509.CertificateRequest, error) {
	der, err := decodeCSR(pemCSR)
	if err == nil {
		var csr *x509.CertificateRequest
		if csr, err = i.checkCSR(der); err == nil {
			return csr, nil
		}
	}
	i.cfg.Metrics.CSRParsingErrors.Inc()
	return nil, err
}

// ttl applies the default and the ceiling to a requested validity.
func (i *Issuer) ttl(requested time.Duration) (time.Duration, error) {
	switch {
	case requested < 0:
		return 0, fmt.Errorf("%w: %s is negative", ErrInvalidTTL, requested)
	case requested == 0:
		return i.cfg.DefaultTTL, nil
	case requested > i.cfg.MaxTTL:
		return i.cfg.MaxTTL, nil
	}
	return requested, nil
}

package grpcapi

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/libs/renewalproof"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/rotationevents"
)

var cart = spiffeid.RequireFromString(cartID)

// revocation is kms-adapter's record of a revocation of id at revokedAt, with the certificates it
// signed after it whose NotBefore is not after the cutoff.
func revocation(id spiffeid.ID, revokedAt time.Time, reissued ...*x509.Certificate) *kmsv1.Revocation {
	r := &kmsv1.Revocation{SpiffeId: id.String(), RevokedAt: timestamppb.New(revokedAt),
		NotBeforeCutoff: timestamppb.New(revokedAt.Add(5 * time.Minute)), ExpiresAt: timestamppb.New(revokedAt.Add(24 * time.Hour))}
	for _, c := range reissued {
		r.ReissuedSerials = append(r.ReissuedSerials, c.SerialNumber.Bytes())
	}
	return r
}

func revocationState(version uint64, rs ...*kmsv1.Revocation) *kmsv1.GetRevocationsResponse {
	return &kmsv1.GetRevocationsResponse{Version: version, Revocations: rs}
}

// issued is a certificate of cart, obtained with a token, and its key.
type issued struct {
	chain []*x509.Certificate
	key   crypto.Signer
}

func issueCart(t *testing.T, h *harness) issued {
	t.Helper()
	csr, key := newCSR(t)
	resp, err := createCert(h.nodeClient("node-a"), h.token(cartWorkload), csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	return issued{parseChain(t, resp.GetCertChain()), key}
}

// proof is a renewal proof by c for a new CSR, which it returns.
func (c issued) proof(t *testing.T) (*structpb.Struct, string) {
	t.Helper()
	csr, _ := newCSR(t)
	block, _ := pem.Decode([]byte(csr))
	p, err := renewalproof.New(c.chain, c.key, block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return p, csr
}

func (c issued) renew(t *testing.T, h *harness) error {
	t.Helper()
	p, csr := c.proof(t)
	_, err := renew(h.nodeClient("node-a"), p, csr)
	return err
}

// Until citadel has loaded kms-adapter's revocation state it grants no renewal proof (after a
// restart it would otherwise grant one by a revoked certificate); token issuance goes on.
func TestNoRenewalProofBeforeTheRevocationStateIsLoaded(t *testing.T) {
	h := newHarness(t, harnessConfig{revocationsUnloaded: true})
	h.kms.SetRevocations(nil) // kms-adapter cannot answer yet
	cert := issueCart(t, h)

	errc := make(chan error, 1)
	go func() { errc <- cert.renew(t, h) }()
	waitFor(t, h.clock.HasWaiters) // the proof waits for the state
	h.clock.Step(testSyncWait)
	wantCode(t, <-errc, codes.Unavailable)
	if err := h.revoked.Refresh(t.Context()); err == nil {
		t.Fatal("loaded a state kms-adapter did not serve")
	}

	h.kms.SetRevocations(revocationState(1))
	go func() { errc <- cert.renew(t, h) }()
	waitFor(t, h.clock.HasWaiters)
	h.refreshRevocations()
	if err := <-errc; err != nil {
		t.Fatalf("renewal waiting for the revocation state failed once it was loaded: %v", err)
	}
}

// A revocation made before citadel started (or while it restarted) is in force: citadel loads it
// from kms-adapter, it does not wait for an event that was published before it followed the stream.
func TestRevocationSurvivesACitadelRestart(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	revoked := issueCart(t, h)
	h.clock.Step(time.Second)
	h.kms.SetRevocations(revocationState(1, revocation(cart, h.clock.Now())))
	h.refreshRevocations()
	wantCode(t, revoked.renew(t, h), codes.Unauthenticated)

	h.startCitadel() // no event will come: the revocation is older than this citadel
	wantCode(t, revoked.renew(t, h), codes.Unauthenticated)
}

// A replacement signed seconds after a revocation may have a NotBefore before it (signers backdate
// for clock skew), so any NotBefore up to the cutoff needs the serial kms-adapter records at
// signing; citadel grants its proofs, even when the copy of the state it holds predates the
// recording.
func TestReplacementSignedJustAfterARevocationRenewsByProof(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	revoked := issueCart(t, h)
	revokedAt := h.clock.Now().Add(time.Second)
	h.clock.Step(2 * time.Second)
	replacement := issueCart(t, h)
	h.kms.SetRevocations(revocationState(1, revocation(cart, revokedAt)))
	h.refreshRevocations()
	h.kms.SetRevocations(revocationState(2, revocation(cart, revokedAt, replacement.chain[0])))
	h.clock.Step(2 * time.Second)

	if err := replacement.renew(t, h); err != nil {
		t.Fatalf("the replacement's renewal was refused: %v", err)
	}
	wantCode(t, revoked.renew(t, h), codes.Unauthenticated)
}

// An event is a hint: a forged revocation with a future revoked_before (it would revoke every
// certificate of the identity, replacements included) only makes citadel fetch the state.
func TestForgedRevocationEventChangesNothing(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	cert := issueCart(t, h)
	handler := &rotationevents.Handler{Cache: h.iss, Revocations: h.revoked, Logger: slog.New(slog.DiscardHandler)}
	fetches := h.kms.RevocationFetches.Load()
	handler.Handle(t.Context(), &eventsv1.Event{Kind: &eventsv1.Event_IdentityRevocation{IdentityRevocation: &eventsv1.IdentityRevocation{
		SpiffeId: cart.String(), RevokedBefore: timestamppb.New(h.clock.Now().Add(24 * time.Hour)), Reason: "forged",
	}}})
	waitFor(t, func() bool { return h.kms.RevocationFetches.Load() > fetches })
	if err := cert.renew(t, h); err != nil {
		t.Fatalf("a forged event revoked a valid certificate: %v", err)
	}
}

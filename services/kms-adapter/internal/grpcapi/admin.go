package grpcapi

import (
	"context"
	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/logkey"
)

// Announcer publishes an event and returns its sequence; events.Publisher implements it.
type Announcer interface {
	Publish(e *eventsv1.Event) uint64
}

// adminServer implements kmsv1.KMSAdminServiceServer: the operator's rotation controls.
type adminServer struct {
	kmsv1.UnimplementedKMSAdminServiceServer
	cfg    Config
	status func(ctx context.Context, op string, err error) error
}

func (a *adminServer) rotator() (kms.Rotator, error) {
	if a.cfg.Rotator == nil {
		return nil, status.Error(codes.Unimplemented, "this kms backend's CA is not rotated by kms-adapter (rotate it in the backend, e.g. Vault's issuers)")
	}
	return a.cfg.Rotator, nil
}

func (a *adminServer) GetCAStatus(ctx context.Context, _ *kmsv1.GetCAStatusRequest) (*kmsv1.CAStatus, error) {
	r, err := a.rotator()
	if err != nil {
		return nil, err
	}
	st, err := r.RotationStatus(ctx)
	if err != nil {
		return nil, a.status(ctx, "reading rotation status", err)
	}
	return caStatus(st), nil
}

func (a *adminServer) RotateCA(ctx context.Context, req *kmsv1.RotateCARequest) (*kmsv1.CAStatus, error) {
	r, err := a.rotator()
	if err != nil {
		return nil, err
	}
	var st kms.RotationStatus
	switch req.GetStep() {
	case kmsv1.RotationStep_ROTATION_STEP_PREPARE:
		st, err = r.PrepareCA(ctx)
	case kmsv1.RotationStep_ROTATION_STEP_ACTIVATE:
		st, err = r.ActivateCA(ctx)
	case kmsv1.RotationStep_ROTATION_STEP_RETIRE:
		st, err = r.RetireCA(ctx, req.GetForce())
	default:
		return nil, status.Errorf(codes.InvalidArgument, "step %s: want PREPARE, ACTIVATE or RETIRE", req.GetStep())
	}
	if err != nil {
		return nil, a.status(ctx, "rotating the CA ("+req.GetStep().String()+")", err)
	}
	caller, _ := servicetls.PeerID(ctx)
	a.cfg.Logger.Info("ca rotation step taken by an operator", "step", req.GetStep().String(), "force", req.GetForce(),
		logkey.Caller, caller.String(), "bundle_version", st.BundleVersion)
	return caStatus(st), nil
}

func (a *adminServer) ForceRotateIdentity(ctx context.Context, req *kmsv1.ForceRotateIdentityRequest) (*kmsv1.ForceRotateIdentityResponse, error) {
	id, err := a.identity(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	seq := a.cfg.Announce.Publish(&eventsv1.Event{Kind: &eventsv1.Event_IdentityRotation{IdentityRotation: &eventsv1.IdentityRotation{
		SpiffeId: id.String(), Reason: req.GetReason(),
	}}})
	a.log(ctx, "identity force-rotated", id, req.GetReason(), seq)
	return &kmsv1.ForceRotateIdentityResponse{EventSequence: seq}, nil
}

func (a *adminServer) RevokeIdentity(ctx context.Context, req *kmsv1.RevokeIdentityRequest) (*kmsv1.RevokeIdentityResponse, error) {
	id, err := a.identity(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	// Durable before it is announced or acknowledged: citadel refetches this state on the event,
	// and after any restart of either service.
	rev, err := a.cfg.Revocations.Revoke(id)
	if err != nil {
		return nil, a.status(ctx, "recording the revocation of "+id.String(), err)
	}
	// The event is a hint that makes agents replace the certificates and citadel refetch the
	// state; no one acts on its revoked_before.
	seq := a.cfg.Announce.Publish(&eventsv1.Event{Kind: &eventsv1.Event_IdentityRevocation{IdentityRevocation: &eventsv1.IdentityRevocation{
		SpiffeId: id.String(), RevokedBefore: timestamppb.New(rev.RevokedAt), Reason: req.GetReason(),
	}}})
	a.log(ctx, "identity revoked", id, req.GetReason(), seq)
	return &kmsv1.RevokeIdentityResponse{EventSequence: seq, RevokedBeforeUnix: rev.RevokedAt.Unix()}, nil
}

// identity checks the ID is a workload of this trust domain and that events can be announced.
func (a *adminServer) identity(ctx context.Context, raw string) (spiffeid.ID, error) {
	if a.cfg.Announce == nil {
		return spiffeid.ID{}, status.Error(codes.FailedPrecondition, "rotation events are disabled (no -nats-url and -nats-embedded=false): nothing would reach the agents")
	}
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "spiffe_id %q: %v", raw, err)
	}
	bundle, err := a.cfg.Backend.TrustBundle(ctx)
	if err != nil {
		return spiffeid.ID{}, a.status(ctx, "reading trust bundle", err)
	}
	if err := kms.CheckIdentity(id, bundle.TrustDomain); err != nil {
		return spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	return id, nil
}

func (a *adminServer) log(ctx context.Context, msg string, id spiffeid.ID, reason string, seq uint64) {
	caller, _ := servicetls.PeerID(ctx)
	a.cfg.Logger.Info(msg, logkey.SPIFFEID, id.String(), "reason", reason, logkey.Caller, caller.String(), "event_sequence", seq)
}

func caStatus(st kms.RotationStatus) *kmsv1.CAStatus {
	info := func(c kms.CAInfo) *kmsv1.CAInfo {
		out := &kmsv1.CAInfo{Root: raw(c.Root)}
		if !c.RetireAt.IsZero() {
			out.RetireAtUnix = c.RetireAt.Unix()
		}
		return out
	}
	out := &kmsv1.CAStatus{BundleVersion: st.BundleVersion, Active: info(st.Active)}
	if st.Next != nil {
		out.Next = info(*st.Next)
	}
	for _, p := range st.Previous {
		out.Previous = append(out.Previous, info(p))
	}
	out.NextStep = map[kms.RotationStep]kmsv1.RotationStep{
		kms.StepPrepared: kmsv1.RotationStep_ROTATION_STEP_PREPARE, kms.StepActivated: kmsv1.RotationStep_ROTATION_STEP_ACTIVATE,
		kms.StepRetired: kmsv1.RotationStep_ROTATION_STEP_RETIRE,
	}[st.NextStep]
	if !st.NextStepAt.IsZero() {
		out.NextStepAtUnix = st.NextStepAt.Unix()
	}
	return out
}

func raw(c *x509.Certificate) []byte {
	if c == nil {
		return nil
	}
	return c.Raw
}

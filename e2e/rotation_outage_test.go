package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

// Polling is pushed out of the way so that only events can explain what the tests see.
var noPolling = map[string][]string{
	stack.NodeAgent: {"-bundle-refresh", "1h"},
	stack.Citadel:   {"-bundle-refresh", "1h"},
}

// Events published while NATS is down reach the agents once it is back (JetStream keeps them,
// followers resume after the last event they handled). An agent killed during a rotation comes
// back with current certificates for its sidecars.
func TestRotationCatchesUpAfterNATSAndAgentOutages(t *testing.T) {
	s, _ := startStackOpts(t, stack.Options{ExternalNATS: true, Extra: noPolling})
	ctl := admin(t, s)
	a, b := sidecar(t, s, "shop/frontend-0"), sidecar(t, s, "payments/ledger-0")

	if err := s.Process(stack.NATS).Stop(); err != nil {
		t.Fatal(err)
	}
	prepared := rotate(t, ctl, kmsv1.RotationStep_ROTATION_STEP_PREPARE, false)
	newRoot := parseRoot(t, prepared.GetNext())
	time.Sleep(2 * time.Second) // nothing can arrive while NATS is down
	if a.Current().Trusts(newRoot) {
		t.Fatal("the new root arrived although NATS was down and polling is off")
	}
	if err := s.Resume(context.Background(), stack.NATS); err != nil {
		t.Fatal(err)
	}
	waitAll(t, "the prepared root after NATS came back", 60*time.Second, func(v *stack.SVID) bool { return v.Trusts(newRoot) }, a, b)

	// Kill node-a's agent (no clean stop), activate, and start it again.
	if err := s.Agent("node-a").Kill(); err != nil {
		t.Fatal(err)
	}
	rotate(t, ctl, kmsv1.RotationStep_ROTATION_STEP_ACTIVATE, false)
	waitAll(t, "node-b re-issued under the new root", 30*time.Second, func(v *stack.SVID) bool { return v.ChainsTo(newRoot) }, b)
	if err := s.Resume(context.Background(), "nodeagent-node-a"); err != nil {
		t.Fatal(err)
	}
	a2 := sidecar(t, s, "shop/frontend-0") // Envoy reconnects after its agent restarts
	if v := a2.Current(); !v.ChainsTo(newRoot) || !v.Trusts(newRoot) {
		t.Fatalf("after restarting during the rotation, node-a serves a leaf chaining to the new root: %v, trusting it: %v",
			v.ChainsTo(newRoot), v.Trusts(newRoot))
	}
	if _, err := stack.Handshake(context.Background(), a2.Current(), b.Current()); err != nil {
		t.Fatalf("handshake after the outages: %v", err)
	}
}

// Events are hints. A node agent cannot publish one; and an event from the rightful publisher
// whose data does not match what citadel serves changes nothing a sidecar receives.
func TestForgedEventsChangeNothingASidecarReceives(t *testing.T) {
	s, _ := startStackWith(t, noPolling)
	a := sidecar(t, s, "shop/frontend-0")
	before, pushes := a.Current(), a.Pushes()
	td := s.TrustDomain()

	agentID, _ := servicetls.NodeAgentID(td, "node-a")
	js := natsAs(t, s, "forger-agent", agentID)
	bogus := &eventsv1.Event{SchemaVersion: events.SchemaVersion, TrustDomain: td.Name(), Id: "forged-1",
		Kind: &eventsv1.Event_TrustBundleChanged{TrustBundleChanged: &eventsv1.TrustBundleChanged{BundleVersion: 1 << 40}}}
	if _, err := publish(js, events.SubjectBundle, bogus); err == nil {
		t.Fatal("a node agent's identity published an event")
	}

	// Even kms-adapter's own identity (a compromised publisher) cannot make a sidecar take
	// anything the event says: agents fetch from citadel, which serves kms-adapter's bundle.
	kmsID, _ := servicetls.ServiceID(td, servicetls.KMSAdapter)
	js = natsAs(t, s, "forger-kms", kmsID)
	bogus.Id = "forged-2"
	if _, err := publish(js, events.SubjectBundle, bogus); err != nil {
		t.Fatalf("publishing as kms-adapter: %v", err)
	}
	rotation := &eventsv1.Event{SchemaVersion: events.SchemaVersion, TrustDomain: td.Name(), Id: "forged-3",
		Kind: &eventsv1.Event_CaRotation{CaRotation: &eventsv1.CARotation{Step: eventsv1.CARotation_STEP_PREPARED, BundleVersion: 1 << 40}}}
	if _, err := publish(js, events.SubjectCA, rotation); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second) // the agent has refetched the (unchanged) bundle several times by now
	after := a.Current()
	if len(after.Roots) != len(before.Roots) || !after.Trusts(before.Roots[0]) {
		t.Fatalf("forged events changed the sidecar's ROOTCA: %d roots before, %d after", len(before.Roots), len(after.Roots))
	}
	if a.Pushes() != pushes || after.Leaf().SerialNumber.Cmp(before.Leaf().SerialNumber) != 0 {
		t.Fatalf("forged events caused %d pushes", a.Pushes()-pushes)
	}
}

func natsAs(t *testing.T, s *stack.Stack, name string, id spiffeid.ID) jetstream.JetStream {
	t.Helper()
	ident, err := s.Identity(name, id)
	if err != nil {
		t.Fatal(err)
	}
	kmsID, _ := servicetls.ServiceID(s.TrustDomain(), servicetls.KMSAdapter)
	// Each identity may receive replies only under its own inbox prefix.
	nc, err := nats.Connect("tls://"+s.Process(stack.KMSAdapter).Addr("nats"), nats.Secure(ident.ClientTLS(kmsID)),
		nats.CustomInboxPrefix(events.ScopeOf(id).InboxPrefix()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func publish(js jetstream.JetStream, subject string, e *eventsv1.Event) (*jetstream.PubAck, error) {
	data, err := proto.Marshal(e)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return js.Publish(ctx, subject, data)
}

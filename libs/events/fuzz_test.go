package events_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/libs/events"
	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
)

// FuzzDecode feeds Decode what anyone able to publish on the event subjects could send. An
// accepted message is a well-formed event of this schema, published on its kind's subject.
func FuzzDecode(f *testing.F) {
	for _, e := range []*eventsv1.Event{
		{Kind: &eventsv1.Event_TrustBundleChanged{TrustBundleChanged: &eventsv1.TrustBundleChanged{BundleVersion: 7}}},
		{Kind: &eventsv1.Event_CaRotation{CaRotation: &eventsv1.CARotation{Step: eventsv1.CARotation_STEP_PREPARED, BundleVersion: 2}}},
		{Kind: &eventsv1.Event_IdentityRotation{IdentityRotation: &eventsv1.IdentityRotation{}}},
		{Kind: &eventsv1.Event_IdentityRevocation{IdentityRevocation: &eventsv1.IdentityRevocation{}}},
		{Kind: &eventsv1.Event_CertificateExpiring{CertificateExpiring: &eventsv1.CertificateExpiring{}}},
		{Kind: &eventsv1.Event_JwtBundleChanged{JwtBundleChanged: &eventsv1.JWTBundleChanged{BundleVersion: 3}}},
	} {
		e.SchemaVersion, e.Sequence, e.Id, e.TrustDomain = events.SchemaVersion, 42, "cluster.local-42", "cluster.local"
		e.Time = timestamppb.Now()
		subject, err := events.Subject(e)
		if err != nil {
			f.Fatal(err)
		}
		data, err := proto.Marshal(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(subject, data)
		f.Add(events.SubjectBundle, data) // the wrong subject for most
	}
	f.Add(events.SubjectCA, []byte{0x08, 0x02}) // schema version 2
	f.Add("", []byte{})
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		e, err := events.Decode(subject, data)
		if err != nil {
			if e != nil {
				t.Fatal("Decode returned an event with its error")
			}
			return
		}
		if e.GetSchemaVersion() != events.SchemaVersion {
			t.Fatalf("accepted schema version %d", e.GetSchemaVersion())
		}
		want, err := events.Subject(e)
		if err != nil || want != subject {
			t.Fatalf("accepted a %s event on %q (its subject: %q, %v)", events.Kind(e), subject, want, err)
		}
		if events.Kind(e) == "unknown" {
			t.Fatal("accepted an event of no kind")
		}
		// What was accepted survives a round trip unchanged.
		again, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := events.Decode(subject, again)
		if err != nil || !proto.Equal(e, e2) {
			t.Fatalf("re-encoded event decodes as %v, %v", e2, err)
		}
	})
}

// Package events is the rotation fan-out on NATS JetStream: the subjects and stream of the events
// kms-adapter publishes (proto portcullis.events.v1), a connection to NATS from flags, a publisher
// that never loses an event to a NATS outage, and a subscriber that catches up after one.
//
// An event is a hint, never the truth: receivers act on one only by fetching state over mTLS.
package events

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
)

// Stream is the JetStream stream that holds every event.
const Stream = "PORTCULLIS_EVENTS"

// Subjects, one per kind of event, all under SubjectAll.
const (
	SubjectAll            = "portcullis.events.>"
	SubjectBundle         = "portcullis.events.bundle"
	SubjectCA             = "portcullis.events.ca"
	SubjectIdentityRotate = "portcullis.events.identity.rotate"
	SubjectIdentityRevoke = "portcullis.events.identity.revoke"
	SubjectCertExpiring   = "portcullis.events.cert.expiring"
	SubjectJWTBundle      = "portcullis.events.jwt.bundle"
	SchemaVersion         = 1
	// MaxConsumerInactivity bounds how long a consumer of the stream lives without a pull.
	MaxConsumerInactivity   = 5 * time.Minute
	defaultStreamMaxAge     = 7 * 24 * time.Hour
	defaultDuplicatesWindow = 2 * time.Minute
)

// Kind names an event's kind, for logs and metric labels.
func Kind(e *eventsv1.Event) string {
	switch e.GetKind().(type) {
	case *eventsv1.Event_TrustBundleChanged:
		return "trust_bundle_changed"
	case *eventsv1.Event_CaRotation:
		return "ca_rotation"
	case *eventsv1.Event_IdentityRotation:
		return "identity_rotation"
	case *eventsv1.Event_IdentityRevocation:
		return "identity_revocation"
	case *eventsv1.Event_CertificateExpiring:
		return "certificate_expiring"
	case *eventsv1.Event_JwtBundleChanged:
		return "jwt_bundle_changed"
	default:
		return "unknown"
	}
}

// Subject is where an event of e's kind is published.
func Subject(e *eventsv1.Event) (string, error) {
	switch e.GetKind().(type) {
	case *eventsv1.Event_TrustBundleChanged:
		return SubjectBundle, nil
	case *eventsv1.Event_CaRotation:
		return SubjectCA, nil
	case *eventsv1.Event_IdentityRotation:
		return SubjectIdentityRotate, nil
	case *eventsv1.Event_IdentityRevocation:
		return SubjectIdentityRevoke, nil
	case *eventsv1.Event_CertificateExpiring:
		return SubjectCertExpiring, nil
	case *eventsv1.Event_JwtBundleChanged:
		return SubjectJWTBundle, nil
	default:
		return "", fmt.Errorf("event %q has no kind", e.GetId())
	}
}

// ErrMalformed marks a message that is not an event this package understands; receivers skip it.
var ErrMalformed = errors.New("malformed event")

// Decode parses a message body and checks what every receiver relies on. The subject must match
// the event's kind, so that a subscriber filtering by subject is never handed another kind.
func Decode(subject string, data []byte) (*eventsv1.Event, error) {
	e := &eventsv1.Event{}
	if err := proto.Unmarshal(data, e); err != nil {
		return nil, fmt.Errorf("%w on %s: %v", ErrMalformed, subject, err)
	}
	if e.GetSchemaVersion() != SchemaVersion {
		return nil, fmt.Errorf("%w on %s: schema version %d (this build knows %d)", ErrMalformed, subject, e.GetSchemaVersion(), SchemaVersion)
	}
	want, err := Subject(e)
	if err != nil {
		return nil, fmt.Errorf("%w on %s: %v", ErrMalformed, subject, err)
	}
	if want != subject {
		return nil, fmt.Errorf("%w: a %s event on %s", ErrMalformed, Kind(e), subject)
	}
	return e, nil
}

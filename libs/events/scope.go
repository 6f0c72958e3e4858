package events

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// GuardedAPIRoot is where followers send JetStream API requests on Portcullis's own NATS server
// (embedded in kms-adapter, or tools/cmd/natsd): the server checks each request against the
// sender's Scope and only then passes it on to $JS.API. A follower may not touch $JS.API itself,
// because NATS permissions match whole subject tokens and cannot tell a follower's own consumers
// (one name per reset of an ordered consumer) or an ephemeral from a durable one.
const GuardedAPIRoot = "portcullis.jsapi"

// Scope is what one control-plane identity may touch on NATS: its own inbox subjects and its own
// consumers of the event stream, all named by one subject token derived from its SPIFFE ID.
// Distinct IDs get distinct tokens, and no token is a prefix of another's subjects, so a node
// agent can neither read another node's deliveries nor reach another node's consumers.
type Scope struct{ token string }

// ScopeOf returns the scope of id. The token reads as the ID's path (for operators looking at
// consumer lists) followed by a hash of the whole ID, which keeps it unique: a path alone is not,
// once characters a subject token cannot hold are replaced.
func ScopeOf(id spiffeid.ID) Scope {
	readable := strings.TrimPrefix(id.Path(), "/portcullis/")
	if len(readable) > 48 {
		readable = readable[len(readable)-48:]
	}
	readable = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, readable)
	sum := sha256.Sum256([]byte(id.String()))
	return Scope{token: readable + "_" + hex.EncodeToString(sum[:12])}
}

// ScopeFromToken is the scope a token names (as taken from a subject the sender may publish on).
func ScopeFromToken(token string) Scope { return Scope{token: token} }

// Token is the single subject token that names the scope.
func (s Scope) Token() string { return s.token }

// InboxPrefix is the identity's own inbox prefix (nats.CustomInboxPrefix): replies and
// deliveries to it go to subjects under InboxPrefix + ".", which no other identity may subscribe to.
func (s Scope) InboxPrefix() string { return "_INBOX_" + s.token }

// ConsumerPrefix names the consumers of one follower process of the identity: ordered consumers
// are named <prefix>_<n>. Processes that share an identity (citadel's replicas) pass distinct
// instances, 1 to 32 letters or digits, so that they never share a consumer (with ack policy
// none, each would get only part of the events).
func (s Scope) ConsumerPrefix(instance string) string { return s.token + "_" + instance }

// OwnsConsumer reports whether name is one of the identity's consumers:
// <token>_<instance>_<n>, instance letters or digits, n digits.
func (s Scope) OwnsConsumer(name string) bool {
	rest, ok := strings.CutPrefix(name, s.token+"_")
	if !ok {
		return false
	}
	instance, n, ok := strings.Cut(rest, "_")
	return ok && len(instance) <= 32 && isAlnum(instance) && len(n) <= 19 && isDigits(n)
}

func isAlnum(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// OwnsInbox reports whether subject is under the identity's inbox prefix.
func (s Scope) OwnsInbox(subject string) bool {
	rest, ok := strings.CutPrefix(subject, s.InboxPrefix()+".")
	return ok && rest != ""
}

// GuardedAPIPrefix is the JetStream API prefix the identity uses on Portcullis's own NATS server.
func (s Scope) GuardedAPIPrefix() string { return GuardedAPIRoot + "." + s.token }

package events_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/events"
)

func TestScopesAreDistinctAndConfined(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ids := []spiffeid.ID{
		spiffeid.RequireFromPath(td, "/portcullis/citadel"),
		spiffeid.RequireFromPath(td, "/portcullis/nodeagent/a"),
		spiffeid.RequireFromPath(td, "/portcullis/nodeagent/a.b"),
		spiffeid.RequireFromPath(td, "/portcullis/nodeagent/a_b"),
		spiffeid.RequireFromPath(td, "/portcullis/nodeagent/a-b"),
		spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("other.local"), "/portcullis/nodeagent/a"),
	}
	seen := map[string]spiffeid.ID{}
	for _, id := range ids {
		s := events.ScopeOf(id)
		if prev, ok := seen[s.Token()]; ok {
			t.Errorf("%s and %s share the token %s", prev, id, s.Token())
		}
		seen[s.Token()] = id
		if strings.ContainsAny(s.Token(), ".*> \t") {
			t.Errorf("token %q of %s is not one subject token", s.Token(), id)
		}
		if !s.OwnsConsumer(s.ConsumerPrefix("abc")+"_1") || !s.OwnsInbox(s.InboxPrefix()+".x.y") {
			t.Errorf("%s does not own its own consumer or inbox", id)
		}
		for _, other := range ids {
			if other == id {
				continue
			}
			o := events.ScopeOf(other)
			if s.OwnsConsumer(o.ConsumerPrefix("abc")+"_1") || s.OwnsInbox(o.InboxPrefix()+".x") {
				t.Errorf("%s owns a consumer or inbox of %s", id, other)
			}
		}
	}
	s := events.ScopeOf(ids[1])
	p := s.ConsumerPrefix("abc")
	for _, name := range []string{p, p + "_", p + "_1x", p + "_1_2", s.Token() + "_1", s.Token() + "__1", s.Token() + "_a-b_1"} {
		if s.OwnsConsumer(name) {
			t.Errorf("OwnsConsumer(%q) = true", name)
		}
	}
	if s.OwnsInbox(s.InboxPrefix()) || s.OwnsInbox(s.InboxPrefix()+"x.y") || s.OwnsInbox("_INBOX.x") {
		t.Error("OwnsInbox accepted a subject outside the prefix")
	}
}

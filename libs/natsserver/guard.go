package natsserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/portcullis-mesh/portcullis/libs/events"
)

// guard serves events.GuardedAPIRoot: the only JetStream API a follower may reach. A follower
// publishes a request to <root>.<token>.<$JS.API request>; NATS permissions make sure the token is
// the sender's own (it may publish under no other), so the guard knows whose request it is. It
// passes on to $JS.API what an ordered consumer of the event stream needs, on the sender's own
// consumers, with replies only to the sender's own inbox; it answers anything else with a
// JetStream API error.
//
// Subject permissions alone cannot do this: they match whole tokens, so they can neither allow
// <token>_1, <token>_2, … (one consumer name per reset of an ordered consumer) and nothing else,
// nor see that a create request asks for a durable or a push consumer, nor check the reply
// subject that JetStream delivers to.
type guard struct {
	logger *slog.Logger
}

const jsAPI = "$JS.API."

// handle checks one request and passes it on to $JS.API, or refuses it.
func (g *guard) handle(nc *nats.Conn, m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, events.GuardedAPIRoot+".")
	if !ok {
		return
	}
	token, req, ok := strings.Cut(rest, ".")
	if !ok {
		return
	}
	scope := events.ScopeFromToken(token)
	if !scope.OwnsInbox(m.Reply) {
		// JetStream would deliver to whatever reply subject it is given: another follower's
		// inbox, or the event subjects themselves. No answer can be sent to such a request.
		g.logger.Warn("refused a jetstream request", "scope", token, "request", req, "reason", "reply subject is not the sender's inbox")
		return
	}
	if err := checkRequest(scope, req, m.Data); err != nil {
		g.logger.Warn("refused a jetstream request", "scope", token, "request", req, "err", err)
		refuse(nc, m.Reply, err)
		return
	}
	out := &nats.Msg{Subject: jsAPI + req, Reply: m.Reply, Header: m.Header, Data: m.Data}
	if err := nc.PublishMsg(out); err != nil {
		g.logger.Warn("passing on a jetstream request failed", "scope", token, "request", req, "err", err)
	}
}

// checkRequest allows what events.Subscriber does: read the stream's info, and create, pull from,
// look at and delete its own ephemeral, in-memory, pull consumers of the event stream.
func checkRequest(scope events.Scope, req string, body []byte) error {
	if req == "STREAM.INFO."+events.Stream {
		return nil
	}
	for _, verb := range []string{"CONSUMER.INFO.", "CONSUMER.DELETE.", "CONSUMER.MSG.NEXT."} {
		if name, ok := strings.CutPrefix(req, verb+events.Stream+"."); ok {
			return ownConsumer(scope, name)
		}
	}
	if rest, ok := strings.CutPrefix(req, "CONSUMER.CREATE."+events.Stream+"."); ok {
		name, _, _ := strings.Cut(rest, ".") // an optional filter subject follows the name
		if err := ownConsumer(scope, name); err != nil {
			return err
		}
		return checkCreate(name, body)
	}
	return fmt.Errorf("%s is not open to followers", req)
}

func ownConsumer(scope events.Scope, name string) error {
	if !scope.OwnsConsumer(name) {
		return fmt.Errorf("consumer %q is not the sender's (its consumers are %s_<instance>_<n>)", name, scope.Token())
	}
	return nil
}

// checkCreate refuses a consumer that could outlive its follower, deliver anywhere but to the
// follower's pull requests, or read outside the event subjects. It decodes the request into the
// server's own type, so it sees exactly what the server would act on.
func checkCreate(name string, body []byte) error {
	var req server.CreateConsumerRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return fmt.Errorf("decoding the consumer request: %w", err)
	}
	c := req.Config
	var errs []error
	if req.Stream != events.Stream {
		errs = append(errs, fmt.Errorf("stream %q, want %s", req.Stream, events.Stream))
	}
	if c.Durable != "" {
		errs = append(errs, errors.New("durable consumers are not allowed"))
	}
	if c.Name != name {
		errs = append(errs, fmt.Errorf("name %q differs from the subject's %q", c.Name, name))
	}
	if c.DeliverSubject != "" || c.DeliverGroup != "" {
		errs = append(errs, errors.New("push consumers are not allowed"))
	}
	if c.AckPolicy != server.AckNone {
		errs = append(errs, errors.New("only ack policy none is allowed"))
	}
	if !c.MemoryStorage || c.Replicas > 1 {
		errs = append(errs, errors.New("only in-memory, single-replica consumers are allowed"))
	}
	if c.InactiveThreshold <= 0 || c.InactiveThreshold > events.MaxConsumerInactivity {
		errs = append(errs, fmt.Errorf("inactive threshold %s is outside (0, %s]", c.InactiveThreshold, events.MaxConsumerInactivity))
	}
	for _, f := range append([]string{c.FilterSubject}, c.FilterSubjects...) {
		// Literal first tokens make any valid subject under them a subset of the event subjects.
		if f != "" && (!strings.HasPrefix(f, "portcullis.events.") || !server.IsValidSubject(f)) {
			errs = append(errs, fmt.Errorf("filter subject %q is not an event subject", f))
		}
	}
	return errors.Join(errs...)
}

// apiError is the shape of a JetStream API error, so that clients report the reason.
type apiError struct {
	Type  string `json:"type"`
	Error struct {
		Code        int    `json:"code"`
		ErrCode     uint16 `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

func refuse(nc *nats.Conn, reply string, err error) {
	var resp apiError
	resp.Type = "io.nats.jetstream.api.v1.error_response"
	resp.Error.Code = 403
	resp.Error.ErrCode = 10000 + 403
	resp.Error.Description = "refused by portcullis: " + err.Error()
	data, _ := json.Marshal(resp)
	_ = nc.Publish(reply, data)
}

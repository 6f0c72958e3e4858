package natsserver

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/portcullis-mesh/portcullis/libs/events"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

// authenticator admits clients by the SPIFFE ID of the certificate they presented (already
// verified against the control-plane CA by the TLS handshake) and gives each its permissions.
type authenticator struct {
	td         spiffeid.TrustDomain
	publishers []string
	logger     *slog.Logger
	// guardToken admits the guard's in-process connection; it never leaves the process.
	guardToken string
}

func (a *authenticator) Check(c server.ClientAuthentication) bool {
	if a.isGuard(c) {
		c.RegisterUser(&server.User{Username: "portcullis-guard", Permissions: &server.Permissions{
			// Replies go to any follower's inbox, so publish cannot be narrower than ">".
			Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{events.SubjectAll}},
			Subscribe: &server.SubjectPermission{Allow: []string{events.GuardedAPIRoot + ".>"}},
		}})
		return true
	}
	id, err := a.peer(c)
	if err != nil {
		a.logger.Warn("refused a nats client", "remote", c.RemoteAddress().String(), "err", err)
		return false
	}
	perms, err := a.permissions(id)
	if err != nil {
		a.logger.Warn("refused a nats client", "remote", c.RemoteAddress().String(), "spiffe_id", id.String(), "err", err)
		return false
	}
	c.RegisterUser(&server.User{Username: id.String(), Permissions: perms})
	return true
}

func (a *authenticator) peer(c server.ClientAuthentication) (spiffeid.ID, error) {
	state := c.GetTLSConnectionState()
	if state == nil || len(state.PeerCertificates) == 0 {
		return spiffeid.ID{}, fmt.Errorf("no client certificate: present a Portcullis control-plane certificate")
	}
	// The handshake has already verified the certificate against the control-plane CA
	// (Identity.ServerTLS): a client whose certificate does not verify never gets here.
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, err
	}
	if !id.MemberOf(a.td) {
		return spiffeid.ID{}, fmt.Errorf("%s is not in trust domain %s", id, a.td)
	}
	return id, nil
}

func (a *authenticator) isGuard(c server.ClientAuthentication) bool {
	opts := c.GetOpts()
	addr := c.RemoteAddress()
	return opts != nil && opts.Token != "" && addr != nil && addr.Network() == "pipe" &&
		subtle.ConstantTimeCompare([]byte(opts.Token), []byte(a.guardToken)) == 1
}

// permissions gives every identity its own inbox (events.Scope) and nothing of anyone else's.
// Publishers (kms-adapter) publish events and manage the stream; followers (citadel, node agents)
// reach JetStream only through the guard, under their own token.
func (a *authenticator) permissions(id spiffeid.ID) (*server.Permissions, error) {
	scope := events.ScopeOf(id)
	inbox := &server.SubjectPermission{Allow: []string{scope.InboxPrefix() + ".>"}}
	if slices.ContainsFunc(a.publishers, func(svc string) bool { return servicetls.IsService(id, svc) }) {
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{events.SubjectAll, "$JS.API.>"}},
			Subscribe: inbox,
		}, nil
	}
	_, isAgent := servicetls.NodeOf(id)
	if isAgent || servicetls.IsService(id, servicetls.Citadel) {
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{scope.GuardedAPIPrefix() + ".>"}},
			Subscribe: inbox,
		}, nil
	}
	return nil, fmt.Errorf("%s may not use the event bus", id)
}

// logAdapter sends the server's log to slog.
type logAdapter struct{ l *slog.Logger }

// Notices (the start-up banner, connection chatter) go to debug; warnings and errors stay.
func (a *logAdapter) Noticef(format string, v ...any) {
	a.l.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (a *logAdapter) Warnf(format string, v ...any) {
	a.l.Warn(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (a *logAdapter) Fatalf(format string, v ...any) {
	a.l.Error(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (a *logAdapter) Errorf(format string, v ...any) {
	a.l.Error(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (a *logAdapter) Debugf(format string, v ...any) {
	a.l.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (a *logAdapter) Tracef(format string, v ...any) {
	a.l.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

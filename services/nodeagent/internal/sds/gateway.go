package sds

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/gatewaycerts"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// GatewayCertificates serves Istio's "kubernetes://" names (see package gatewaycerts);
// *gatewaycerts.Store satisfies it. Safe for concurrent use.
type GatewayCertificates interface {
	// Secret renders name for a caller in namespace running as serviceAccount, with its content
	// version; errors wrap gatewaycerts.ErrNotFound, ErrNotAllowed or ErrBadName.
	Secret(name, namespace, serviceAccount string) (*anypb.Any, string, error)
	// Subscribe calls f after every change of a certificate the service account was or is
	// allowed, until cancel.
	Subscribe(namespace, serviceAccount string, f func()) (cancel func())
}

func isGatewayName(name string) bool { return strings.HasPrefix(name, gatewaycerts.Prefix) }

// gateway renders a gateway certificate, mapping its refusals to the errors toStatus knows.
func (s *Server) gateway(caller identity.Caller, name string) (built, error) {
	if s.cfg.Gateways == nil {
		return built{}, fmt.Errorf("%w %q: this agent does not serve gateway certificates", errUnknownName, name)
	}
	res, version, err := s.cfg.Gateways.Secret(name, caller.Workload.Namespace, caller.Workload.ServiceAccount)
	switch {
	case errors.Is(err, gatewaycerts.ErrNotAllowed):
		return built{}, fmt.Errorf("%w: %w", errForeignName, err)
	case errors.Is(err, gatewaycerts.ErrNotFound), errors.Is(err, gatewaycerts.ErrBadName):
		return built{}, fmt.Errorf("%w: %w", errUnknownName, err)
	case err != nil:
		return built{}, err
	}
	return built{res: res, version: version}, nil
}

// subscribeGateways makes a stream's push run after every change of a gateway certificate its
// caller's service account was or is allowed (a rotation, a revocation).
func (s *Server) subscribeGateways(caller identity.Caller, push func()) (cancel func()) {
	if s.cfg.Gateways == nil {
		return func() {}
	}
	return s.cfg.Gateways.Subscribe(caller.Workload.Namespace, caller.Workload.ServiceAccount, push)
}

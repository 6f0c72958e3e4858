package sds

import (
	"context"
	"maps"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
)

// DeltaSecrets serves an incremental SDS stream: only resources whose version changed are sent.
func (s *Server) DeltaSecrets(stream secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	s.cfg.Observe.StreamOpened()
	defer s.cfg.Observe.StreamClosed()
	reqs, recvErr := receive(ctx, stream.Recv)

	var req *discovery.DeltaDiscoveryRequest
	select {
	case req = <-reqs:
	case err := <-recvErr:
		if streamEnded(err) {
			return nil
		}
		return err
	}
	caller, err := s.authenticate(ctx, req.GetNode())
	if err != nil {
		return s.toStatus(err)
	}
	sub := s.cfg.Secrets.Subscribe(caller.ID)
	defer s.cfg.Secrets.Unsubscribe(sub)

	subscribed := map[string]bool{}
	sentVersions := map[string]string{} // what the client holds, by name
	for name, v := range req.GetInitialResourceVersions() {
		sentVersions[name] = v
	}
	var sent uint64
	for {
		if req != nil {
			if req.GetErrorDetail() != nil {
				s.cfg.Observe.Nacked(req.GetResourceNamesSubscribe(), req.GetErrorDetail().GetMessage())
			}
			if err := checkNames(caller, req.GetResourceNamesSubscribe()); err != nil {
				return s.toStatus(err)
			}
			for _, n := range req.GetResourceNamesSubscribe() {
				subscribed[n] = true
			}
			for _, n := range req.GetResourceNamesUnsubscribe() {
				delete(subscribed, n)
				delete(sentVersions, n)
			}
			req = nil
		}
		names := slices.Sorted(maps.Keys(subscribed))
		res, err := s.build(ctx, caller, names)
		if err != nil {
			return s.toStatus(err)
		}
		resp := &discovery.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL}
		for _, n := range names {
			if sentVersions[n] != res[n].version {
				resp.Resources = append(resp.Resources, &discovery.Resource{Name: n, Version: res[n].version, Resource: res[n].res})
			}
		}
		if len(resp.Resources) > 0 {
			sent++
			resp.Nonce = nonce(sent)
			resp.SystemVersionInfo = sotwVersion(names, res)
			if err := stream.Send(resp); err != nil {
				return err
			}
			for _, r := range resp.Resources {
				sentVersions[r.Name] = r.Version
				s.cfg.Observe.Pushed(r.Name)
			}
		}
		select {
		case req = <-reqs:
		case <-sub.C:
		case err := <-recvErr:
			if streamEnded(err) {
				return nil
			}
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

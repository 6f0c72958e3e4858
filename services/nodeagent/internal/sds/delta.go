package sds

import (
	"maps"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// DeltaSecrets serves an incremental SDS stream: only resources whose version changed are sent.
func (s *Server) DeltaSecrets(stream secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	subscribed := map[string]bool{}
	var sentVersions map[string]string // what the client holds, by name
	var sent uint64
	var added []string // the names the current request subscribed to
	return serveSession(s, stream.Context(), stream.Recv, func(caller identity.Caller, req *discovery.DeltaDiscoveryRequest) error {
		if sentVersions == nil {
			sentVersions = map[string]string{}
			for name, v := range req.GetInitialResourceVersions() {
				sentVersions[name] = v
			}
		}
		if req != nil {
			if req.GetErrorDetail() != nil {
				s.cfg.Observe.Nacked(req.GetResourceNamesSubscribe(), req.GetErrorDetail().GetMessage())
			}
			if err := checkNames(caller, req.GetResourceNamesSubscribe()); err != nil {
				return s.toStatus(err)
			}
			added = added[:0]
			for _, n := range req.GetResourceNamesSubscribe() {
				if !subscribed[n] {
					added = append(added, n)
				}
				subscribed[n] = true
			}
			for _, n := range req.GetResourceNamesUnsubscribe() {
				delete(subscribed, n)
				delete(sentVersions, n)
			}
			if len(added) == 0 {
				// An ACK, NACK or unsubscription: nothing to send; changes arrive on the subscription.
				return nil
			}
		}
		names := slices.Sorted(maps.Keys(subscribed))
		res, err := s.build(stream.Context(), caller, names)
		if err != nil {
			return s.toStatus(err)
		}
		if err := refusal(res, added); err != nil {
			return s.toStatus(err)
		}
		added = added[:0]
		resp := &discovery.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL}
		for _, n := range names {
			if res[n].res == nil { // a KeySecret taken away (keysecret.go)
				if _, held := sentVersions[n]; held {
					resp.RemovedResources = append(resp.RemovedResources, n)
				}
				continue
			}
			if sentVersions[n] != res[n].version {
				resp.Resources = append(resp.Resources, &discovery.Resource{Name: n, Version: res[n].version, Resource: res[n].res})
			}
		}
		if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
			return nil
		}
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
		for _, n := range resp.RemovedResources {
			delete(sentVersions, n)
		}
		return nil
	})
}

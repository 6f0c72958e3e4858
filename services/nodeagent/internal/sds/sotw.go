package sds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
)

// StreamSecrets serves a state-of-the-world SDS stream. The union of every name the stream has
// asked for stays subscribed (MOSN sends one name per request); each response carries them all.
func (s *Server) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	s.cfg.Observe.StreamOpened()
	defer s.cfg.Observe.StreamClosed()
	reqs, recvErr := receive(ctx, stream.Recv)

	var req *discovery.DiscoveryRequest
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

	var (
		names       []string
		sentVersion string
		sent        uint64
	)
	for {
		if req != nil {
			if req.GetErrorDetail() != nil {
				s.cfg.Observe.Nacked(names, req.GetErrorDetail().GetMessage())
				s.cfg.Logger.Warn("sidecar rejected an update", "spiffe_id", caller.ID.String(), "detail", req.GetErrorDetail().GetMessage())
			}
			if err := checkNames(caller, req.GetResourceNames()); err != nil {
				return s.toStatus(err)
			}
			grew := false
			for _, n := range req.GetResourceNames() {
				if !slices.Contains(names, n) {
					names, grew = append(names, n), true
				}
			}
			if len(names) == 0 {
				return s.toStatus(errNoNames)
			}
			if grew {
				sentVersion = "" // the new names must be answered even if nothing else changed
			}
			req = nil
		}
		res, err := s.build(ctx, caller, names)
		if err != nil {
			return s.toStatus(err)
		}
		if v := sotwVersion(names, res); v != sentVersion {
			resp := &discovery.DiscoveryResponse{VersionInfo: v, TypeUrl: SecretTypeURL, Nonce: nonce(sent + 1)}
			for _, n := range names {
				resp.Resources = append(resp.Resources, res[n].res)
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			sent, sentVersion = sent+1, v
			for _, n := range names {
				s.cfg.Observe.Pushed(n)
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

// FetchSecrets answers one request from the cache (issuing what is missing).
func (s *Server) FetchSecrets(ctx context.Context, req *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	caller, err := s.authenticate(ctx, req.GetNode())
	if err != nil {
		return nil, s.toStatus(err)
	}
	names := req.GetResourceNames()
	if len(names) == 0 {
		return nil, s.toStatus(errNoNames)
	}
	if err := checkNames(caller, names); err != nil {
		return nil, s.toStatus(err)
	}
	res, err := s.build(ctx, caller, names)
	if err != nil {
		return nil, s.toStatus(err)
	}
	resp := &discovery.DiscoveryResponse{VersionInfo: sotwVersion(names, res), TypeUrl: SecretTypeURL}
	for _, n := range names {
		resp.Resources = append(resp.Resources, res[n].res)
	}
	return resp, nil
}

// sotwVersion names the content of a whole response.
func sotwVersion(names []string, res map[string]built) string {
	h := sha256.New()
	for _, n := range names {
		h.Write([]byte(n + "=" + res[n].version + ";"))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

package sds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
)

// StreamSecrets serves a state-of-the-world SDS stream. The union of every name the stream has
// asked for stays subscribed (MOSN sends one name per request); each response carries them all.
func (s *Server) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	var (
		names       []string
		sentVersion string
		sent        uint64
		resumed     bool     // answered before it asked (resume.go)
		added       []string // the names the current request added
	)
	return serveSession(s, stream.Context(), s.resumingRecv(stream.Context(), stream.Recv), func(caller identity.Caller, req *discovery.DiscoveryRequest) error {
		if req == resumeRequest {
			names, resumed = s.resumeNames(caller), true
			s.cfg.Observe.Resumed()
			s.cfg.Logger.Info("resumed a silent sds stream", "spiffe_id", caller.ID.String(), "via", caller.Via, "names", names)
			req = nil
		}
		if req != nil {
			if req.GetErrorDetail() != nil {
				s.cfg.Observe.Nacked(names, req.GetErrorDetail().GetMessage())
				s.cfg.Logger.Warn("sidecar rejected an update", "spiffe_id", caller.ID.String(), "detail", req.GetErrorDetail().GetMessage())
			}
			if err := checkNames(caller, req.GetResourceNames()); err != nil {
				return s.toStatus(err)
			}
			if resumed && len(req.GetResourceNames()) > 0 {
				// A resumed stream that asks after all: it gets what it asks for from now on.
				names, resumed, sentVersion = nil, false, ""
			}
			grew := false
			added = added[:0]
			for _, n := range req.GetResourceNames() {
				if !slices.Contains(names, n) {
					names, grew = append(names, n), true
					added = append(added, n)
				}
			}
			if len(names) == 0 {
				return s.toStatus(errNoNames)
			}
			if !grew {
				// An ACK or NACK: nothing new was asked, and changes arrive on the subscription.
				return nil
			}
			s.hold(caller, names)
			sentVersion = "" // the new names must be answered even if nothing else changed
		}
		res, err := s.build(stream.Context(), caller, names)
		if err != nil {
			return s.toStatus(err)
		}
		if err := refusal(res, added); err != nil {
			return s.toStatus(err)
		}
		added = added[:0]
		v := sotwVersion(names, res)
		if v == sentVersion {
			return nil
		}
		resp := &discovery.DiscoveryResponse{VersionInfo: v, TypeUrl: SecretTypeURL, Nonce: nonce(sent + 1)}
		for _, n := range names {
			if res[n].res != nil { // a KeySecret taken away: omitted (keysecret.go)
				resp.Resources = append(resp.Resources, res[n].res)
			}
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		sent, sentVersion = sent+1, v
		for _, n := range names {
			if res[n].res != nil {
				s.cfg.Observe.Pushed(n)
			}
		}
		return nil
	})
}

// FetchSecrets answers one request from the cache (issuing what is missing).
func (s *Server) FetchSecrets(ctx context.Context, req *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	caller, err := s.authenticate(ctx, req.GetNode())
	if err != nil {
		return nil, s.toStatus(err)
	}
	if len(req.GetResourceNames()) == 0 {
		return nil, s.toStatus(errNoNames)
	}
	if err := checkNames(caller, req.GetResourceNames()); err != nil {
		return nil, s.toStatus(err)
	}
	// Each name is answered once, however often it is asked for (as on a stream).
	var names []string
	for _, n := range req.GetResourceNames() {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	res, err := s.build(ctx, caller, names)
	if err != nil {
		return nil, s.toStatus(err)
	}
	if err := refusal(res, names); err != nil {
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

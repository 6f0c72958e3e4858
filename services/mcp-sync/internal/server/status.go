package server

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/mcpclient"
)

// clusterNodeID is the node ID of the whole-cluster view, reserved for citadel.
const clusterNodeID = mcpclient.ClusterNodeID

// servedType reports whether mcp-sync serves typeURL. A request for another type would otherwise
// wait forever for a response that never comes.
func servedType(typeURL string) bool {
	switch typeURL {
	case mcpclient.PodTypeURL, mcpclient.ServiceAccountTypeURL, mcpclient.NamespaceTypeURL,
		mcpclient.KeySecretTypeURL, mcpclient.TLSPolicyTypeURL, mcpclient.ScopeConfigTypeURL,
		mcpclient.GatewayCertificateTypeURL:
		return true
	}
	return false
}

// The xDS server returns a callback's error as the stream's status, so these are the codes
// clients see.

func permissionDenied(msg string) error { return status.Error(codes.PermissionDenied, msg) }

func invalidArgument(msg string) error { return status.Error(codes.InvalidArgument, msg) }

func unauthenticated(err error) error {
	return status.Errorf(codes.Unauthenticated, "a control-plane client certificate is required: %v", err)
}

package gatewaycert

import (
	"strings"

	authv1 "k8s.io/api/authorization/v1"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// accessReview asks whether the service account may `get` the certificate's Secret, as the
// service account's own token would be judged: its user name and the groups Kubernetes gives
// every service account, so that bindings to those groups count too.
func accessReview(ns, name string, gc *mcpv1.GatewayCertificate) *authv1.SubjectAccessReview {
	return &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{
		User:   "system:serviceaccount:" + ns + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		ResourceAttributes: &authv1.ResourceAttributes{
			Namespace: gc.GetNamespace(), Verb: "get", Resource: "secrets", Name: gc.GetSecretName(),
		},
	}}
}

// cutAccount splits "<namespace>/<name>".
func cutAccount(sa string) (ns, name string, ok bool) { return strings.Cut(sa, "/") }

package metrics

import "github.com/prometheus/client_golang/prometheus"

// AttestRequests counts node attestations by result: "issued", or the gRPC code of the refusal
// ("Unauthenticated", "PermissionDenied", "InvalidArgument", "Unavailable", "Internal").
const AttestRequests = "portcullis_citadel_attest_requests_total"

// NewAttest registers the node attestation counter on reg.
func NewAttest(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: AttestRequests, Help: "Node attestations, by result: issued, or the gRPC code of the refusal.",
	}, []string{"result"})
	reg.MustRegister(c)
	return c
}

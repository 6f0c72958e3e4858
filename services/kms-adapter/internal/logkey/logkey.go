// Package logkey names the attributes of kms-adapter's structured logs, so that the same thing is
// logged under the same key everywhere and log queries do not break on a rename.
package logkey

const (
	Err                  = "err"
	Backend              = "backend"
	StateDir             = "state_dir"
	TrustDomain          = "trust_domain"
	SPIFFEID             = "spiffe_id"
	Caller               = "caller"
	Serial               = "serial"
	NotAfter             = "not_after"
	MaxTTL               = "max_ttl"
	RootFingerprint      = "root_sha256"
	RootNotAfter         = "root_not_after"
	IntermediateNotAfter = "intermediate_not_after"
	PreviousNotAfter     = "previous_not_after"
)

// Package kmsmetrics instruments a kms.Backend by wrapping it, so that every backend (local CA,
// Vault) reports the same metrics without knowing about them.
package kmsmetrics

// Metric names and label values of kms-adapter's backend metrics; dashboards and alerts use them.
const (
	SignTotal                          = "portcullis_kms_sign_total"
	SignDurationSeconds                = "portcullis_kms_sign_duration_seconds"
	RootExpiryTimestampSeconds         = "portcullis_kms_root_expiry_timestamp_seconds"
	IntermediateExpiryTimestampSeconds = "portcullis_kms_intermediate_expiry_timestamp_seconds"
	JWTSignTotal                       = "portcullis_kms_jwt_sign_total"
	JWTActiveKeyAgeSeconds             = "portcullis_kms_jwt_active_key_age_seconds"

	LabelResult = "result"

	ResultOK      = "ok"      // a chain was issued
	ResultInvalid = "invalid" // the request was refused: bad CSR or identity (a caller problem)
	ResultError   = "error"   // the backend failed (an operator problem)
)

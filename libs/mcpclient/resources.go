package mcpclient

// MCP type URLs of the Portcullis custom resources mcp-sync serves. A node agent receives only
// the KeySecrets of pods on its node; the cluster view (citadel) receives none.
const (
	KeySecretTypeURL   = "type.googleapis.com/portcullis.mcp.v1.KeySecret"
	TLSPolicyTypeURL   = "type.googleapis.com/portcullis.mcp.v1.TLSPolicy"
	ScopeConfigTypeURL = "type.googleapis.com/portcullis.mcp.v1.ScopeConfig"
)

package mcpclient

// GatewayCertificateTypeURL is the MCP type URL of the gateway certificates (opted-in
// kubernetes.io/tls Secrets) mcp-sync serves. A node agent receives only those that a pod on its
// node may read; the cluster view (citadel) receives none.
const GatewayCertificateTypeURL = "type.googleapis.com/portcullis.mcp.v1.GatewayCertificate"

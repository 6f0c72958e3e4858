package vault

// Token is the client's current Vault token, for tests that check a re-login happened.
func (b *Backend) Token() string { return b.client.Token() }

// IntermediateSerial is the serial of the current intermediate (intermediate mode).
func (b *Backend) IntermediateSerial() string { return b.inter.Load().cert.SerialNumber.String() }

// Package jwtaudience is the one rule on a JWT-SVID's audiences, shared by the node agent (which
// refuses a bad request before asking citadel), citadel and kms-adapter: 1 to MaxAudiences values,
// each non-empty and at most MaxLength bytes (an audience names a service, never kilobytes).
package jwtaudience

import "fmt"

// Limits of a JWT-SVID's aud.
const (
	MaxAudiences = 10
	MaxLength    = 256
)

// Check reports the first way auds breaks the rule; callers wrap the error with their own kind.
func Check(auds []string) error {
	switch {
	case len(auds) == 0:
		return fmt.Errorf("at least one audience is required (the services the token is meant for)")
	case len(auds) > MaxAudiences:
		return fmt.Errorf("%d audiences, at most %d allowed", len(auds), MaxAudiences)
	}
	for i, a := range auds {
		if a == "" {
			return fmt.Errorf("audience %d is empty", i)
		}
		if len(a) > MaxLength {
			return fmt.Errorf("audience %d has %d bytes, at most %d allowed", i, len(a), MaxLength)
		}
	}
	return nil
}

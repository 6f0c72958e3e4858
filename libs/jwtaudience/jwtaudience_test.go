package jwtaudience

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	long := strings.Repeat("a", MaxLength)
	many := make([]string, MaxAudiences)
	for i := range many {
		many[i] = "svc"
	}
	for _, ok := range [][]string{{"a"}, {long}, many} {
		if err := Check(ok); err != nil {
			t.Errorf("Check(%d audiences) = %v", len(ok), err)
		}
	}
	for want, bad := range map[string][]string{
		"at least one audience is required":             nil,
		"11 audiences, at most 10 allowed":              append(many, "one more"),
		"audience 1 is empty":                           {"a", ""},
		"audience 0 has 257 bytes, at most 256 allowed": {long + "a"},
	} {
		if err := Check(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check(%q) = %v; want %q", bad, err, want)
		}
	}
}

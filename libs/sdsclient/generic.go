package sdsclient

import (
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Generic returns the data of a generic_secret: its secrets map (a whole KeySecret,
// "key/<namespace>/<name>"), or its one secret under the key "" ("key/<namespace>/<name>/<data
// key>"). Only inline bytes or strings are accepted, as the node agent sends them.
func Generic(s *tlsv3.Secret) (map[string][]byte, error) {
	g := s.GetGenericSecret()
	if g == nil {
		return nil, fmt.Errorf("secret %q is not a generic_secret", s.GetName())
	}
	out := map[string][]byte{}
	if g.GetSecret() != nil {
		b, err := inlineData(g.GetSecret())
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", s.GetName(), err)
		}
		out[""] = b
	}
	for k, ds := range g.GetSecrets() {
		b, err := inlineData(ds)
		if err != nil {
			return nil, fmt.Errorf("secret %q key %q: %w", s.GetName(), k, err)
		}
		out[k] = b
	}
	return out, nil
}

func inlineData(ds *core.DataSource) ([]byte, error) {
	switch {
	case ds.GetInlineBytes() != nil:
		return ds.GetInlineBytes(), nil
	case ds.GetInlineString() != "":
		return []byte(ds.GetInlineString()), nil
	}
	return nil, fmt.Errorf("data source is not inline")
}

package sds

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/identity"
	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/keysecrets"
)

// KeySecretPrefix starts the names of KeySecret resources:
//
//	key/<namespace>/<name>            generic_secret.secrets: every data key → its bytes
//	key/<namespace>/<name>/<data key> generic_secret.secret: that key's bytes alone
//
// The first is what a security sidecar consumes (all the KeySecret's keys in one resource, as
// Envoy's GenericSecret.secrets carries "multiple associated secrets distributed together"); the
// second suits an Envoy filter that takes one generic secret (an HMAC or token secret).
const KeySecretPrefix = "key/"

// KeySecrets is what the agent may serve under KeySecretPrefix (*keysecrets.Store). Safe for
// concurrent use.
type KeySecrets interface {
	// Lookup returns the KeySecret "<namespace>/<name>" if caller may read it, or an error
	// wrapping keysecrets.ErrNotFound, ErrForbidden or ErrTooLarge.
	Lookup(ctx context.Context, caller identity.Caller, key string) (*mcpv1.KeySecret, error)
	// SubscribeFunc calls onChange, in its own goroutine, after a change that may change what
	// Lookup answers; cancel unsubscribes.
	SubscribeFunc(onChange func()) (cancel func())
}

// keySecret builds a KeySecret resource for caller. A refusal is not an error of the build: it is
// carried in built.refused, so that a request naming the resource is refused with it while a
// push to a stream that held it takes the resource away (omitted from a SotW response, removed
// in a delta one).
func (s *Server) keySecret(ctx context.Context, caller identity.Caller, name string) built {
	if s.cfg.KeySecrets == nil {
		return built{refused: keysecrets.ErrNotFound}
	}
	rest := strings.TrimPrefix(name, KeySecretPrefix)
	parts := strings.Split(rest, "/")
	if len(parts) < 2 || len(parts) > 3 || slices.Contains(parts, "") {
		return built{refused: errBadKeyName(name)}
	}
	ks, err := s.cfg.KeySecrets.Lookup(ctx, caller, parts[0]+"/"+parts[1])
	if err != nil {
		return built{refused: err}
	}
	dataKey := ""
	if len(parts) == 3 {
		dataKey = parts[2]
		if _, ok := ks.GetData()[dataKey]; !ok {
			return built{refused: errMissingDataKey(name)}
		}
	}
	return s.keys.render(name, dataKey, ks)
}

func errBadKeyName(name string) error {
	return fmt.Errorf("%w: resource %q: want key/<namespace>/<name> or key/<namespace>/<name>/<data key>", keysecrets.ErrNotFound, name)
}

func errMissingDataKey(name string) error {
	return fmt.Errorf("%w: resource %q: the KeySecret has no such data key", keysecrets.ErrNotFound, name)
}

// maxRenderedKeys bounds the rendered-KeySecret cache (it starts over past it).
const maxRenderedKeys = 4096

// keyRenderer renders KeySecret resources once per change, whichever stream asks. Versions are
// keyed digests (HMAC with a key of this process): a plain digest of a short token would let
// whoever sees the version confirm a guess of the token offline.
type keyRenderer struct {
	once sync.Once
	mac  []byte
	mu   sync.Mutex
	done map[string]renderedKey
}

type renderedKey struct {
	ks  *mcpv1.KeySecret // the view's object: a new one on every change
	res built
}

func (r *keyRenderer) render(name, dataKey string, ks *mcpv1.KeySecret) built {
	r.once.Do(func() {
		r.mac = make([]byte, 32)
		_, _ = rand.Read(r.mac) // crypto/rand does not fail
		r.done = map[string]renderedKey{}
	})
	r.mu.Lock()
	if c, ok := r.done[name]; ok && c.ks == ks {
		r.mu.Unlock()
		return c.res
	}
	r.mu.Unlock()

	h := hmac.New(sha256.New, r.mac)
	h.Write([]byte(ks.GetUid() + "\x00"))
	gs := &tlsv3.GenericSecret{}
	if dataKey != "" {
		v := ks.GetData()[dataKey]
		h.Write(v)
		gs.Secret = inline(v)
	} else {
		gs.Secrets = make(map[string]*core.DataSource, len(ks.GetData()))
		for _, k := range slices.Sorted(maps.Keys(ks.GetData())) {
			v := ks.GetData()[k]
			h.Write([]byte(k + "\x00"))
			h.Write(v)
			h.Write([]byte{0})
			gs.Secrets[k] = inline(v)
		}
	}
	b, err := render(&tlsv3.Secret{Name: name, Type: &tlsv3.Secret_GenericSecret{GenericSecret: gs}}, hex.EncodeToString(h.Sum(nil)[:8]))
	if err != nil {
		return built{refused: err}
	}
	r.mu.Lock()
	if len(r.done) >= maxRenderedKeys {
		r.done = map[string]renderedKey{}
	}
	r.done[name] = renderedKey{ks, b}
	r.mu.Unlock()
	return b
}

// refusal is the first refusal among the named resources: a request that asks for a resource the
// caller may not have is refused with it.
func refusal(res map[string]built, names []string) error {
	for _, n := range names {
		if err := res[n].refused; err != nil {
			return err
		}
	}
	return nil
}

package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

// parseNames splits -names: comma-separated SDS resource names, blanks dropped.
func parseNames(s string) []string {
	var out []string
	for n := range strings.SplitSeq(s, ",") {
		if n = strings.TrimSpace(n); n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// resourceStatus is what the probe last received for one of its -names. It describes the
// material without carrying it: a generic secret by the SHA-256 of each value (a test knows the
// values it wrote and compares digests), a certificate by its serial and SANs, a validation
// context by its CAs' fingerprints.
type resourceStatus struct {
	Kind     string            `json:"kind"` // generic_secret, tls_certificate or validation_context
	SHA256   map[string]string `json:"sha256,omitempty"`
	Serial   string            `json:"serial,omitempty"`
	DNSNames []string          `json:"dns_names,omitempty"`
	Chain    int               `json:"chain,omitempty"` // certificates in the tls_certificate chain
	NotAfter string            `json:"not_after,omitempty"`
	CASHA256 []string          `json:"ca_sha256,omitempty"`
}

// resources holds the probe's -names, as last pushed on their own SDS stream (a refusal of one of
// them ends that stream, and must not cost the probe its SVID). Each SotW response carries every
// name the stream holds, so a name missing from a response was taken away. Safe for concurrent
// use.
type resources struct {
	names []string

	mu      sync.RWMutex
	held    map[string]resourceStatus
	updates int
	streams int // streams the agent answered: a push on an open stream leaves it as it was
	lastErr string
}

func newResources(names []string) *resources {
	return &resources{names: names, held: map[string]resourceStatus{}}
}

// apply takes one SDS response on the names' stream as the whole state of that stream.
func (r *resources) apply(secrets map[string]*tlsv3.Secret) error {
	held := make(map[string]resourceStatus, len(secrets))
	for name, s := range secrets {
		if !slices.Contains(r.names, name) {
			continue
		}
		st, err := describe(s)
		if err != nil {
			return err
		}
		held[name] = st
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held = held
	r.updates++
	r.lastErr = ""
	return nil
}

func describe(s *tlsv3.Secret) (resourceStatus, error) {
	switch {
	case s.GetGenericSecret() != nil:
		data, err := sdsclient.Generic(s)
		if err != nil {
			return resourceStatus{}, err
		}
		st := resourceStatus{Kind: "generic_secret", SHA256: make(map[string]string, len(data))}
		for k, v := range data {
			st.SHA256[k] = sha256Hex(v)
		}
		return st, nil
	case s.GetTlsCertificate() != nil:
		cert, err := sdsclient.Certificate(s)
		if err != nil {
			return resourceStatus{}, err
		}
		return resourceStatus{Kind: "tls_certificate", Serial: cert.Leaf.SerialNumber.Text(16),
			DNSNames: slices.Clone(cert.Leaf.DNSNames), Chain: len(cert.Certificate),
			NotAfter: cert.Leaf.NotAfter.UTC().Format(time.RFC3339)}, nil
	case s.GetValidationContext() != nil:
		roots, err := sdsclient.Roots(s)
		if err != nil {
			return resourceStatus{}, err
		}
		st := resourceStatus{Kind: "validation_context"}
		for _, c := range roots {
			st.CASHA256 = append(st.CASHA256, sha256Hex(c.Raw))
		}
		return st, nil
	default:
		return resourceStatus{}, fmt.Errorf("secret %q: unknown type", s.GetName())
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// setError records the last failure of the names' stream (cleared by the next response). What
// the probe held stays: a refused reconnect takes nothing away that a response did not.
func (r *resources) setError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastErr = err.Error()
}

// opened counts a stream on which the agent answered.
func (r *resources) opened() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.streams++
}

// namesStatus is the part of GET /status about -names.
type namesStatus struct {
	Resources        map[string]resourceStatus `json:"resources"`
	ResourcesUpdates int                       `json:"resources_updates"`
	ResourcesStreams int                       `json:"resources_streams"`
	ResourcesError   string                    `json:"resources_error"`
}

func (r *resources) status() namesStatus {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return namesStatus{Resources: maps.Clone(r.held), ResourcesUpdates: r.updates, ResourcesStreams: r.streams, ResourcesError: r.lastErr}
}

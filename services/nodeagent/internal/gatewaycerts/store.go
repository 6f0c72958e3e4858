// Package gatewaycerts holds the gateway certificates mcp-sync sends this node (opted-in
// kubernetes.io/tls Secrets that a pod here may read) and answers Istio's SDS names for them:
// "kubernetes://<name>" (the caller's namespace) or "kubernetes://<namespace>/<name>" is the
// certificate chain and key, and the same name with "-cacert" appended is the Secret's ca.crt.
// A caller gets a certificate only when its service account is one mcp-sync found allowed to
// read the Secret (a SubjectAccessReview).
//
// The material lives in memory only: never written to disk, logged or exported in metrics.
package gatewaycerts

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
)

// Prefix starts every gateway certificate SDS name, as in Istio.
const Prefix = "kubernetes://"

// CASuffix turns a certificate's name into its CA's, as in Istio.
const CASuffix = "-cacert"

var (
	// ErrNotFound: no such certificate on this node (not opted in, not valid yet, or no pod here
	// may read it).
	ErrNotFound = errors.New("no such gateway certificate on this node")
	// ErrNotAllowed: the caller's service account may not read the Secret.
	ErrNotAllowed = errors.New("the caller's service account may not read this gateway certificate")
	// ErrBadName: the name is not kubernetes://[<namespace>/]<name>.
	ErrBadName = errors.New("malformed gateway certificate name")
)

// Store is the node's gateway certificates. It implements mcpclient.Applier. Safe for
// concurrent use.
type Store struct {
	logger *slog.Logger

	mu    sync.Mutex
	certs map[string]*entry // by "<namespace>/<secret name>"
	subs  map[*subscription]struct{}
}

type entry struct {
	gc      *mcpv1.GatewayCertificate
	allowed map[string]bool
	digest  string // of chain, key and CA: the SDS version
}

type subscription struct {
	account string // "<namespace>/<service account>" of the stream's caller
	f       func()
}

// New returns an empty store.
func New(logger *slog.Logger) *Store {
	return &Store{logger: logger.With("component", "gateway-certificates"), certs: map[string]*entry{}, subs: map[*subscription]struct{}{}}
}

// Apply takes the node's full set. A certificate that fails the agent's own checks keeps its
// last good version (mcp-sync checks first; this guards against a broken or older mcp-sync).
// Subscribers are told when a certificate their service account was or is allowed changed: a
// rotation reaches the gateways' streams, a revocation too, and the node's other streams are
// left alone.
func (s *Store) Apply(resources []*anypb.Any) error {
	next := make(map[string]*entry, len(resources))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range resources {
		gc := &mcpv1.GatewayCertificate{}
		if err := a.UnmarshalTo(gc); err != nil {
			return fmt.Errorf("decoding gateway certificate: %w", err)
		}
		e, err := newEntry(gc)
		if err != nil {
			s.logger.Warn("gateway certificate refused, keeping the last good one", "name", gc.GetName(), "err", err)
			if old, ok := s.certs[gc.GetName()]; ok {
				// The old material, but the new allowed list: a revocation still applies.
				next[gc.GetName()] = old.withAllowed(gc.GetAllowedServiceAccounts())
			}
			continue
		}
		next[gc.GetName()] = e
	}
	affected := map[string]bool{}
	touch := func(e *entry) {
		for sa := range e.allowed {
			affected[sa] = true
		}
	}
	for name, e := range next {
		old, ok := s.certs[name]
		switch {
		case !ok:
			touch(e)
		case old != e && (old.digest != e.digest || !slices.Equal(old.gc.GetAllowedServiceAccounts(), e.gc.GetAllowedServiceAccounts())):
			touch(old)
			touch(e)
		}
	}
	for name, old := range s.certs {
		if _, ok := next[name]; !ok {
			touch(old)
		}
	}
	s.certs = next
	for sub := range s.subs {
		if affected[sub.account] {
			go sub.f() // pushes take the stream's lock; never under ours
		}
	}
	return nil
}

func newEntry(gc *mcpv1.GatewayCertificate) (*entry, error) {
	if _, err := tls.X509KeyPair(gc.GetCertificateChain(), gc.GetPrivateKey()); err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	if ca := gc.GetCaCertificate(); len(ca) > 0 {
		if blk, _ := pem.Decode(ca); blk == nil {
			return nil, errors.New("ca certificate: no PEM")
		} else if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, fmt.Errorf("ca certificate: %w", err)
		}
	}
	h := sha256.New()
	for _, b := range [][]byte{gc.GetCertificateChain(), gc.GetPrivateKey(), gc.GetCaCertificate()} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	e := &entry{gc: gc, allowed: map[string]bool{}, digest: hex.EncodeToString(h.Sum(nil)[:8])}
	for _, sa := range gc.GetAllowedServiceAccounts() {
		e.allowed[sa] = true
	}
	return e, nil
}

func (e *entry) withAllowed(allowed []string) *entry {
	if slices.Equal(e.gc.GetAllowedServiceAccounts(), allowed) {
		return e
	}
	gc := proto.Clone(e.gc).(*mcpv1.GatewayCertificate)
	gc.AllowedServiceAccounts = allowed
	out := &entry{gc: gc, allowed: map[string]bool{}, digest: e.digest}
	for _, sa := range allowed {
		out.allowed[sa] = true
	}
	return out
}

// Subscribe calls f (on its own goroutine) after every change of a certificate that the service
// account serviceAccount of namespace was or is allowed; cancel stops it.
func (s *Store) Subscribe(namespace, serviceAccount string, f func()) (cancel func()) {
	sub := &subscription{account: namespace + "/" + serviceAccount, f: f}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	}
}

// Ref is a parsed SDS name.
type Ref struct {
	Namespace, Secret string
	CA                bool // the "-cacert" form: the Secret's ca.crt
}

// Parse reads "kubernetes://[<namespace>/]<name>[-cacert]"; a name without a namespace is in
// callerNamespace. Whether "-cacert" names the CA is decided by Secret: Istio does the same.
func Parse(name, callerNamespace string) (Ref, error) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok || rest == "" {
		return Ref{}, fmt.Errorf("%w %q: want %s[<namespace>/]<secret name>", ErrBadName, name, Prefix)
	}
	ns, secret, qualified := strings.Cut(rest, "/")
	if !qualified {
		ns, secret = callerNamespace, rest
	}
	if ns == "" || secret == "" || strings.Contains(secret, "/") {
		return Ref{}, fmt.Errorf("%w %q: want %s[<namespace>/]<secret name>", ErrBadName, name, Prefix)
	}
	return Ref{Namespace: ns, Secret: secret}, nil
}

// Secret renders the named resource for a caller running as serviceAccount in namespace, with
// its content version. The SDS resource is named name, as asked.
func (s *Store) Secret(name, namespace, serviceAccount string) (*anypb.Any, string, error) {
	ref, err := Parse(name, namespace)
	if err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	e, ok := s.certs[ref.Namespace+"/"+ref.Secret]
	if !ok {
		if base, isCA := strings.CutSuffix(ref.Secret, CASuffix); isCA {
			e, ok = s.certs[ref.Namespace+"/"+base]
			ref.CA = ok
		}
	}
	s.mu.Unlock()
	if !ok {
		return nil, "", fmt.Errorf("%w: %q (opt the Secret in with the label portcullis.dev/gateway-certificate=true and let this service account get it)", ErrNotFound, name)
	}
	if !e.allowed[namespace+"/"+serviceAccount] {
		return nil, "", fmt.Errorf("%w: %q, service account %s/%s", ErrNotAllowed, name, namespace, serviceAccount)
	}
	secret := &tlsv3.Secret{Name: name}
	if ref.CA {
		if len(e.gc.GetCaCertificate()) == 0 {
			return nil, "", fmt.Errorf("%w: %q: the Secret has no ca.crt", ErrNotFound, name)
		}
		secret.Type = &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(e.gc.GetCaCertificate()),
		}}
	} else {
		secret.Type = &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(e.gc.GetCertificateChain()), PrivateKey: inline(e.gc.GetPrivateKey()),
		}}
	}
	a, err := anypb.New(secret)
	if err != nil {
		return nil, "", fmt.Errorf("encoding %q: %w", name, err)
	}
	return a, e.digest, nil
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: bytes.Clone(b)}}
}

package main

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
)

// rootCAName is the SDS resource of the trust bundle (Istio's name, served by the node agent).
const rootCAName = "ROOTCA"

// maxPeers bounds the peers a probe remembers; a test cluster has a handful.
const maxPeers = 100

var errNoSVID = errors.New("no svid received yet")

// identity is the probe's current SVID and trust bundle, as last pushed over SDS. It is the
// x509svid.Source and x509bundle.Source of both TLS sides, so every handshake uses what was
// pushed last. Safe for concurrent use.
type identity struct {
	resource string // the SVID's SDS resource name

	mu      sync.RWMutex
	svid    *x509svid.SVID
	roots   []*x509.Certificate
	updates int
	lastErr string
	peers   []string // SPIFFE IDs of clients that completed a handshake, first seen first
}

// apply takes one SDS response. The agent may push the SVID and the bundle together or apart;
// what a response lacks stays as it was.
func (id *identity) apply(secrets map[string]*tlsv3.Secret) error {
	var svid *x509svid.SVID
	if s := secrets[id.resource]; s != nil {
		var err error
		if svid, err = decodeSVID(s); err != nil {
			return err
		}
	}
	var roots []*x509.Certificate
	if s := secrets[rootCAName]; s != nil {
		var err error
		if roots, err = sdsclient.Roots(s); err != nil {
			return err
		}
	}
	id.mu.Lock()
	defer id.mu.Unlock()
	if svid != nil {
		id.svid = svid
	}
	if roots != nil {
		id.roots = roots
	}
	id.updates++
	id.lastErr = ""
	return nil
}

func decodeSVID(s *tlsv3.Secret) (*x509svid.SVID, error) {
	cert, err := sdsclient.Certificate(s)
	if err != nil {
		return nil, err
	}
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("secret %q: key is not a crypto.Signer", s.GetName())
	}
	chain := make([]*x509.Certificate, 0, len(cert.Certificate))
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", s.GetName(), err)
		}
		chain = append(chain, c)
	}
	spiffeID, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", s.GetName(), err)
	}
	return &x509svid.SVID{ID: spiffeID, Certificates: chain, PrivateKey: key}, nil
}

// setError records the last failure of the SDS stream (cleared by the next update).
func (id *identity) setError(err error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.lastErr = err.Error()
}

// addPeer records the SPIFFE ID of a client that completed a handshake.
func (id *identity) addPeer(peer spiffeid.ID) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if !slices.Contains(id.peers, peer.String()) && len(id.peers) < maxPeers {
		id.peers = append(id.peers, peer.String())
	}
}

// GetX509SVID implements x509svid.Source.
func (id *identity) GetX509SVID() (*x509svid.SVID, error) {
	id.mu.RLock()
	defer id.mu.RUnlock()
	if id.svid == nil {
		return nil, errNoSVID
	}
	return id.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source. The agent serves one trust domain,
// the SVID's.
func (id *identity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	id.mu.RLock()
	defer id.mu.RUnlock()
	if id.svid == nil || len(id.roots) == 0 {
		return nil, errNoSVID
	}
	if td != id.svid.ID.TrustDomain() {
		return nil, fmt.Errorf("no bundle for trust domain %q (this probe is in %q)", td, id.svid.ID.TrustDomain())
	}
	return x509bundle.FromX509Authorities(td, id.roots), nil
}

// trustDomain is the current SVID's trust domain.
func (id *identity) trustDomain() (spiffeid.TrustDomain, error) {
	svid, err := id.GetX509SVID()
	if err != nil {
		return spiffeid.TrustDomain{}, err
	}
	return svid.ID.TrustDomain(), nil
}

// status is GET /status.
type status struct {
	SPIFFEID     string   `json:"spiffe_id"`
	Serial       string   `json:"serial"`
	NotAfter     string   `json:"not_after"`
	BundleSHA256 []string `json:"bundle_sha256"`
	Updates      int      `json:"updates"`
	LastError    string   `json:"last_error"`
	Peers        []string `json:"peers"`
}

func (id *identity) status() status {
	id.mu.RLock()
	defer id.mu.RUnlock()
	st := status{Updates: id.updates, LastError: id.lastErr, Peers: slices.Clone(id.peers), BundleSHA256: []string{}}
	if st.Peers == nil {
		st.Peers = []string{}
	}
	if id.svid != nil {
		leaf := id.svid.Certificates[0]
		st.SPIFFEID = id.svid.ID.String()
		st.Serial = leaf.SerialNumber.Text(16)
		st.NotAfter = leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	for _, r := range id.roots {
		sum := sha256.Sum256(r.Raw)
		st.BundleSHA256 = append(st.BundleSHA256, hex.EncodeToString(sum[:]))
	}
	return st
}

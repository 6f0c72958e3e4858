// Package expiry remembers the newest certificate kms-adapter issued for each identity and
// announces the ones that come close to expiry: their holders should have renewed long before, so
// the announcement is a nudge to an agent whose renewal got lost.
package expiry

import (
	"context"
	"crypto/x509"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/utils/clock"

	eventsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/events/v1"
	"github.com/portcullis-mesh/portcullis/services/kms-adapter/internal/kms"
)

// Announcer publishes an event; events.Publisher implements it.
type Announcer interface {
	Publish(e *eventsv1.Event) uint64
}

// Config configures a Tracker.
type Config struct {
	Announce Announcer
	Clock    clock.WithTicker // nil means the real clock
	// Lead is how long before expiry a certificate is announced.
	Lead time.Duration
	// Every is how often the tracker looks; 0 means a minute.
	Every time.Duration
}

// Tracker is a kms.Backend decorator that records what it signs. It is safe for concurrent use.
type Tracker struct {
	kms.Backend
	cfg Config

	mu     sync.Mutex
	newest map[spiffeid.ID]issued
}

type issued struct {
	serial    string
	notAfter  time.Time
	announced bool
}

// Wrap records every certificate b signs.
func Wrap(b kms.Backend, cfg Config) *Tracker {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Every == 0 {
		cfg.Every = time.Minute
	}
	return &Tracker{Backend: b, cfg: cfg, newest: map[spiffeid.ID]issued{}}
}

// Sign implements kms.Backend.
func (t *Tracker) Sign(ctx context.Context, req kms.SignRequest) ([]*x509.Certificate, error) {
	chain, err := t.Backend.Sign(ctx, req)
	if err == nil && len(chain) > 0 {
		t.record(req.ID, chain[0])
	}
	return chain, err
}

func (t *Tracker) record(id spiffeid.ID, leaf *x509.Certificate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.newest[id]; ok && !leaf.NotAfter.After(cur.notAfter) {
		return
	}
	t.newest[id] = issued{serial: leaf.SerialNumber.Text(16), notAfter: leaf.NotAfter}
}

// Tracked is the number of identities remembered.
func (t *Tracker) Tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.newest)
}

// Run announces due certificates every cfg.Every until ctx ends.
func (t *Tracker) Run(ctx context.Context) error {
	tick := t.cfg.Clock.NewTicker(t.cfg.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
			t.Sweep()
		}
	}
}

// Sweep announces every certificate within Lead of expiry that was not announced yet, and
// forgets the expired ones (memory follows live identities).
func (t *Tracker) Sweep() {
	now := t.cfg.Clock.Now()
	var due []*eventsv1.Event
	t.mu.Lock()
	for id, c := range t.newest {
		switch {
		case !now.Before(c.notAfter):
			delete(t.newest, id)
		case !c.announced && c.notAfter.Sub(now) <= t.cfg.Lead:
			c.announced = true
			t.newest[id] = c
			due = append(due, &eventsv1.Event{Kind: &eventsv1.Event_CertificateExpiring{CertificateExpiring: &eventsv1.CertificateExpiring{
				SpiffeId: id.String(), Serial: c.serial, NotAfter: timestamppb.New(c.notAfter),
			}}})
		}
	}
	t.mu.Unlock()
	for _, e := range due {
		t.cfg.Announce.Publish(e)
	}
}

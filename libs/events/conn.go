package events

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
)

// ConnConfig says how a service reaches NATS. Secrets (password, nkey seed, creds) are read from
// files, never taken on the command line, and never logged.
type ConnConfig struct {
	URL string // comma-separated server URLs; empty disables events (renewal timers still run)
	// ServerID is the SPIFFE ID the NATS server must present (mTLS with the control-plane CA).
	// Ignored when CAFile is set. Empty means kms-adapter's, the embedded server.
	ServerID string
	// CAFile verifies an external NATS server's certificate (by host name) against this CA
	// instead of the control-plane CA. The service still presents its own certificate.
	CAFile       string
	User         string
	PasswordFile string
	NKeySeedFile string
	CredsFile    string
	// JSAPIPrefix is the JetStream API prefix followers use. Empty means Portcullis's own NATS
	// server (embedded, or tools/cmd/natsd), which checks each follower's requests against its
	// Scope. Set "$JS.API" for an external NATS server; its operator grants the permissions
	// (docs/configuration.md).
	JSAPIPrefix string
}

// RegisterFlags binds the config to fs under -nats-….
func (c *ConnConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "nats-url", "", "NATS server URL(s), comma-separated (empty: no rotation events; renewal timers still run)")
	fs.StringVar(&c.ServerID, "nats-server-id", "", "SPIFFE ID the NATS server must present (default: kms-adapter's, which embeds NATS)")
	fs.StringVar(&c.CAFile, "nats-ca-file", "", "CA file to verify an external NATS server by host name instead of by SPIFFE ID")
	fs.StringVar(&c.User, "nats-user", "", "NATS user name (with -nats-password-file)")
	fs.StringVar(&c.PasswordFile, "nats-password-file", "", "file holding the NATS password")
	fs.StringVar(&c.NKeySeedFile, "nats-nkey-file", "", "file holding a NATS nkey seed")
	fs.StringVar(&c.CredsFile, "nats-creds-file", "", "NATS credentials file (user JWT + nkey seed)")
	fs.StringVar(&c.JSAPIPrefix, "nats-js-api-prefix", "", "JetStream API prefix for following events (empty: the guarded API of Portcullis's own NATS; $JS.API for an external server)")
}

// Validate reports conflicting options.
func (c ConnConfig) Validate() error {
	var errs []error
	n := 0
	for _, set := range []bool{c.User != "" || c.PasswordFile != "", c.NKeySeedFile != "", c.CredsFile != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		errs = append(errs, errors.New("use one of -nats-user/-nats-password-file, -nats-nkey-file and -nats-creds-file"))
	}
	if (c.User == "") != (c.PasswordFile == "") {
		errs = append(errs, errors.New("-nats-user and -nats-password-file go together"))
	}
	if c.JSAPIPrefix != "" && (strings.ContainsAny(c.JSAPIPrefix, "*> \t") || strings.HasPrefix(c.JSAPIPrefix, ".")) {
		errs = append(errs, fmt.Errorf("-nats-js-api-prefix %q is not a subject prefix", c.JSAPIPrefix))
	}
	if c.ServerID != "" {
		if _, err := spiffeid.FromString(c.ServerID); err != nil {
			errs = append(errs, fmt.Errorf("-nats-server-id: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Enabled reports whether a NATS URL is configured.
func (c ConnConfig) Enabled() bool { return c.URL != "" }

// Connect dials NATS with the service's identity. It returns at once even if NATS is down: the
// connection keeps retrying in the background, for ever, and the subscriber and publisher wait.
func Connect(c ConnConfig, id *servicetls.Identity, name string, logger *slog.Logger) (*nats.Conn, error) {
	tlsConf, err := c.tls(id)
	if err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name(name),
		// Replies and deliveries come to subjects that only this identity may subscribe to.
		nats.CustomInboxPrefix(ScopeOf(id.ID()).InboxPrefix()),
		nats.Secure(tlsConf),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// A refusal may be cured by a certificate rotated in on disk: keep trying.
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		// The inbox prefix is what an external server's permissions must let this identity
		// subscribe to (docs/rotation.md).
		nats.ConnectHandler(func(nc *nats.Conn) {
			logger.Info("connected to nats", "url", nc.ConnectedUrlRedacted(), "inbox_prefix", nc.Opts.InboxPrefix)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			logger.Warn("disconnected from nats; events wait until it is back", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { logger.Info("reconnected to nats", "url", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { logger.Warn("nats error", "err", err) }),
	}
	switch {
	case c.User != "":
		pw, err := readSecret(c.PasswordFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfo(c.User, pw))
	case c.NKeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", c.NKeySeedFile, err)
		}
		opts = append(opts, opt)
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to nats at %s: %w", c.URL, err)
	}
	return nc, nil
}

func (c ConnConfig) tls(id *servicetls.Identity) (*tls.Config, error) {
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading -nats-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-nats-ca-file %s holds no PEM certificate", c.CAFile)
		}
		return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, GetClientCertificate: id.ClientCertificate}, nil
	}
	server, err := c.serverID(id.TrustDomain())
	if err != nil {
		return nil, err
	}
	return id.ClientTLS(server), nil
}

func (c ConnConfig) serverID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if c.ServerID == "" {
		return servicetls.ServiceID(td, servicetls.KMSAdapter)
	}
	return spiffeid.FromString(c.ServerID)
}

func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading secret file: %w", err) // the path is in err; the content never
	}
	return strings.TrimSpace(string(b)), nil
}

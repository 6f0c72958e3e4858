package servicetls

import (
	"crypto/tls"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// servedSerial makes a real TLS handshake with a server using ident.ServerTLS and returns the
// serial of the certificate it presented.
func servedSerial(t *testing.T, ident *Identity) *big.Int {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", ident.ServerTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		if c, err := lis.Accept(); err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	// Only the server's certificate is of interest here; its verification is tested elsewhere.
	conn, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestRotatedFilesReachTheNextHandshake(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := NewBootstrapCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := ServiceID(td, Citadel)
	dir := t.TempDir()
	files, err := ca.Issue(dir, "citadel", id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident, err := Load(files)
	if err != nil {
		t.Fatal(err)
	}
	ident.source.(*fileSource).interval = 0 // look at the files on every handshake
	first := servedSerial(t, ident)

	time.Sleep(10 * time.Millisecond) // a distinct modification time
	if _, err := ca.Issue(dir, "citadel", id, time.Hour); err != nil {
		t.Fatal(err)
	}
	rotated := servedSerial(t, ident)
	if rotated.Cmp(first) == 0 {
		t.Fatal("the rotated certificate was not used by the next handshake")
	}

	t.Run("a broken file keeps the last good certificate", func(t *testing.T) {
		time.Sleep(10 * time.Millisecond)
		if err := os.WriteFile(files.CertFile, []byte("half-written"), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := servedSerial(t, ident); got.Cmp(rotated) != 0 {
			t.Fatal("a broken certificate file replaced the good one")
		}
		if ident.ReloadError() == nil {
			t.Fatal("ReloadError is nil after a failed reload")
		}
	})
	t.Run("a certificate for another identity is refused", func(t *testing.T) {
		other, _ := ServiceID(td, KMSAdapter)
		time.Sleep(10 * time.Millisecond)
		if _, err := ca.Issue(dir, "citadel", other, time.Hour); err != nil {
			t.Fatal(err)
		}
		if got := servedSerial(t, ident); got.Cmp(rotated) != 0 {
			t.Fatal("a certificate naming another identity was taken")
		}
		if err := ident.ReloadError(); err == nil || !strings.Contains(err.Error(), "names") {
			t.Fatalf("ReloadError = %v, want it to say the certificate names another identity", err)
		}
		if ident.ID() != id {
			t.Fatalf("ID() = %s after a refused reload, want %s", ident.ID(), id)
		}
	})
}

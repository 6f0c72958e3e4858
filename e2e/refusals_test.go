package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/libs/sdsclient"
	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
	if !strings.Contains(status.Convert(err).Message(), substr) {
		t.Fatalf("error %q does not explain itself (want %q in it)", status.Convert(err).Message(), substr)
	}
}

func TestSDSRefusals(t *testing.T) {
	s, _ := startStack(t)
	frontend1 := pod(t, "shop/frontend-1") // runs on node-b
	ctx := context.Background()

	t.Run("pod on another node", func(t *testing.T) {
		_, err := fetch(t, s, "node-a", frontend1)
		wantCode(t, err, codes.PermissionDenied, "not on node node-a")
	})
	t.Run("expired token", func(t *testing.T) {
		tok, err := s.Token(frontend1, -5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		_, err = stack.FetchSVID(ctx, s.Socket("node-b"), sdsclient.Credential{Token: tok}, "x")
		wantCode(t, err, codes.Unauthenticated, "expired")
	})
	t.Run("forged token", func(t *testing.T) {
		forger, err := workloadtoken.NewIssuer(stack.TokenIssuer, nil) // same name, other key
		if err != nil {
			t.Fatal(err)
		}
		tok, err := forger.Issue(workloadtoken.Workload{Namespace: frontend1.Namespace, ServiceAccount: frontend1.ServiceAccount,
			PodName: frontend1.Name, PodUID: frontend1.UID}, []string{stack.TokenAudience}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = stack.FetchSVID(ctx, s.Socket("node-b"), sdsclient.Credential{Token: tok}, "x")
		wantCode(t, err, codes.Unauthenticated, "signature")
	})
	t.Run("no token", func(t *testing.T) {
		_, err := stack.FetchSVID(ctx, s.Socket("node-b"), sdsclient.Credential{}, "x")
		wantCode(t, err, codes.Unauthenticated, "no workload token")
	})
	t.Run("unknown resource name", func(t *testing.T) {
		tok, err := s.Token(frontend1, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := sdsclient.Dial(s.Socket("node-b"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Fetch(ctx, "x", sdsclient.Credential{Token: tok}, "default", "file-cert:/etc/passwd")
		wantCode(t, err, codes.NotFound, "unknown resource name")
	})
}

// citadelClient dials citadel directly as the node agent of node, or with no client
// certificate when node is "".
func citadelClient(t *testing.T, s *stack.Stack, node string) authv1.IstioCertificateServiceClient {
	t.Helper()
	var conn *grpc.ClientConn
	var err error
	if node == "" {
		// Verify citadel's certificate properly, but present none of our own.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(mustRead(t, s.Dir()+"/certs/ca.pem"))
		creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})
		conn, err = grpc.NewClient(s.Addr(stack.Citadel), grpc.WithTransportCredentials(creds))
	} else {
		conn, err = dialCitadel(s, "test-agent-"+node)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv1.NewIstioCertificateServiceClient(conn)
}

// dialCitadel connects to citadel with a fresh node-a agent certificate.
func dialCitadel(s *stack.Stack, name string) (*grpc.ClientConn, error) {
	citadelID, err := servicetls.ServiceID(s.TrustDomain(), servicetls.Citadel)
	if err != nil {
		return nil, err
	}
	agentID, err := servicetls.NodeAgentID(s.TrustDomain(), "node-a")
	if err != nil {
		return nil, err
	}
	ident, err := s.Identity(name, agentID)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(s.Addr(stack.Citadel), grpc.WithTransportCredentials(ident.ClientCredentials(citadelID)))
}

func TestCitadelRefusals(t *testing.T) {
	s, _ := startStack(t)
	frontend := pod(t, "shop/frontend-0") // runs on node-a
	tok, err := s.Token(frontend, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)

	t.Run("malformed csr", func(t *testing.T) {
		_, err := citadelClient(t, s, "node-a").CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"})
		wantCode(t, err, codes.InvalidArgument, "csr")
	})
	t.Run("no node certificate", func(t *testing.T) {
		_, err := citadelClient(t, s, "").CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: newCSR(t)})
		wantCode(t, err, codes.Unauthenticated, "certificate")
	})
	t.Run("valid request from the right node", func(t *testing.T) {
		resp, err := citadelClient(t, s, "node-a").CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: newCSR(t), ValidityDuration: 3600})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(resp.GetCertChain()); n < 2 {
			t.Fatalf("chain has %d certificates, want leaf..root", n)
		}
	})
}

func newCSR(t testing.TB) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

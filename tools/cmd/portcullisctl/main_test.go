package main

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// admin records what reaches kms-adapter's admin API.
type admin struct {
	kmsv1.UnimplementedKMSAdminServiceServer
	mu   sync.Mutex
	reqs []proto.Message
}

func (a *admin) record(m proto.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reqs = append(a.reqs, m)
}

func (a *admin) RotateCA(_ context.Context, r *kmsv1.RotateCARequest) (*kmsv1.CAStatus, error) {
	a.record(r)
	return &kmsv1.CAStatus{}, nil
}

func (a *admin) GetCAStatus(_ context.Context, r *kmsv1.GetCAStatusRequest) (*kmsv1.CAStatus, error) {
	a.record(r)
	return &kmsv1.CAStatus{}, nil
}

func (a *admin) RotateJWTKey(_ context.Context, r *kmsv1.RotateJWTKeyRequest) (*kmsv1.JWTKeyStatus, error) {
	a.record(r)
	return &kmsv1.JWTKeyStatus{}, nil
}

func (a *admin) GetJWTKeyStatus(_ context.Context, r *kmsv1.GetJWTKeyStatusRequest) (*kmsv1.JWTKeyStatus, error) {
	a.record(r)
	return &kmsv1.JWTKeyStatus{}, nil
}

func (a *admin) RevokeIdentity(_ context.Context, r *kmsv1.RevokeIdentityRequest) (*kmsv1.RevokeIdentityResponse, error) {
	a.record(r)
	return &kmsv1.RevokeIdentityResponse{}, nil
}

func (a *admin) ForceRotateIdentity(_ context.Context, r *kmsv1.ForceRotateIdentityRequest) (*kmsv1.ForceRotateIdentityResponse, error) {
	a.record(r)
	return &kmsv1.ForceRotateIdentityResponse{}, nil
}

// take returns the only request received since the previous call, or nil.
func (a *admin) take(t *testing.T) proto.Message {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	defer func() { a.reqs = nil }()
	switch len(a.reqs) {
	case 0:
		return nil
	case 1:
		return a.reqs[0]
	}
	t.Fatalf("%d requests reached kms-adapter, want at most 1", len(a.reqs))
	return nil
}

func startAdmin(t *testing.T) (*admin, kmsv1.KMSAdminServiceClient) {
	t.Helper()
	a := &admin{}
	srv := grpc.NewServer()
	kmsv1.RegisterKMSAdminServiceServer(srv, a)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return a, kmsv1.NewKMSAdminServiceClient(conn)
}

const id = "spiffe://cluster.local/ns/shop/sa/cart"

// The documented form `rotate-ca retire -force` must send force; flags may stand before or after
// the subcommand's argument, and anything the subcommand does not take is refused before a call.
func TestSubcommandFlagsAfterArguments(t *testing.T) {
	a, client := startAdmin(t)
	retire := kmsv1.RotationStep_ROTATION_STEP_RETIRE
	cases := []struct {
		args []string
		want proto.Message // nil: refused without a call
		err  string
	}{
		{[]string{"rotate-ca", "retire", "-force"}, &kmsv1.RotateCARequest{Step: retire, Force: true}, ""},
		{[]string{"rotate-ca", "-force", "retire"}, &kmsv1.RotateCARequest{Step: retire, Force: true}, ""},
		{[]string{"rotate-ca", "retire"}, &kmsv1.RotateCARequest{Step: retire}, ""},
		{[]string{"revoke", id, "-reason", "key leaked"}, &kmsv1.RevokeIdentityRequest{SpiffeId: id, Reason: "key leaked"}, ""},
		{[]string{"force-rotate", "-reason", "drill", id}, &kmsv1.ForceRotateIdentityRequest{SpiffeId: id, Reason: "drill"}, ""},
		{[]string{"status"}, &kmsv1.GetCAStatusRequest{}, ""},
		{[]string{"rotate-jwt", "retire", "-force"}, &kmsv1.RotateJWTKeyRequest{Step: retire, Force: true}, ""},
		{[]string{"rotate-jwt", "prepare"}, &kmsv1.RotateJWTKeyRequest{Step: kmsv1.RotationStep_ROTATION_STEP_PREPARE}, ""},
		{[]string{"jwt-status"}, &kmsv1.GetJWTKeyStatusRequest{}, ""},
		{[]string{"rotate-jwt", "now"}, nil, `rotate-jwt: want prepare, activate or retire, got "now"`},
		{[]string{"rotate-ca", "retire", "-force", "now"}, nil, `unexpected arguments ["now"]`},
		{[]string{"rotate-ca", "retire", "--", "-force"}, nil, `unexpected arguments ["-force"]`},
		{[]string{"rotate-ca", "--", "retire", "-force"}, nil, `unexpected arguments ["-force"]`},
		{[]string{"rotate-ca"}, nil, "want prepare, activate or retire"},
		{[]string{"rotate-ca", "-reason", "x", "retire"}, nil, "rotate-ca does not take -reason"},
		{[]string{"revoke", id, "-force"}, nil, "revoke does not take -force"},
		{[]string{"revoke", id, id}, nil, "unexpected arguments"},
		{[]string{"status", "now"}, nil, `status: unexpected arguments ["now"]`},
		{[]string{"rotate-ca", "retire", "-forse"}, nil, "flag provided but not defined: -forse"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := command(ctx, client, tc.args[0], tc.args[1:], io.Discard)
			got := a.take(t)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				if got != nil {
					t.Fatalf("refused command still sent %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.want) {
				t.Fatalf("kms-adapter received %v, want %v", got, tc.want)
			}
		})
	}
}

package main

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// recordingClient is the admin API as command sees it, recording what would reach kms-adapter.
type recordingClient struct {
	kmsv1.KMSAdminServiceClient // calls no command makes panic on the nil interface
	reqs                        []proto.Message
}

func (c *recordingClient) GetCAStatus(_ context.Context, r *kmsv1.GetCAStatusRequest, _ ...grpc.CallOption) (*kmsv1.CAStatus, error) {
	c.reqs = append(c.reqs, r)
	return &kmsv1.CAStatus{}, nil
}

func (c *recordingClient) RotateCA(_ context.Context, r *kmsv1.RotateCARequest, _ ...grpc.CallOption) (*kmsv1.CAStatus, error) {
	c.reqs = append(c.reqs, r)
	return &kmsv1.CAStatus{}, nil
}

func (c *recordingClient) ForceRotateIdentity(_ context.Context, r *kmsv1.ForceRotateIdentityRequest, _ ...grpc.CallOption) (*kmsv1.ForceRotateIdentityResponse, error) {
	c.reqs = append(c.reqs, r)
	return &kmsv1.ForceRotateIdentityResponse{}, nil
}

func (c *recordingClient) RevokeIdentity(_ context.Context, r *kmsv1.RevokeIdentityRequest, _ ...grpc.CallOption) (*kmsv1.RevokeIdentityResponse, error) {
	c.reqs = append(c.reqs, r)
	return &kmsv1.RevokeIdentityResponse{}, nil
}

// FuzzCommand parses fuzzed command lines (arguments separated by newlines). Whatever it parses
// sends at most one request, and only a well-formed one: a known rotation step, a force flag
// only when asked for, an identity that was a positional argument and not a flag.
func FuzzCommand(f *testing.F) {
	for _, line := range []string{
		"status",
		"rotate-ca\nprepare",
		"rotate-ca\nretire\n-force",
		"rotate-ca\n-force\nretire",
		"rotate-ca\nretire\n-force=false",
		"force-rotate\n-reason\nleak\nspiffe://cluster.local/ns/shop/sa/cart",
		"revoke\nspiffe://cluster.local/ns/shop/sa/cart\n-reason\nx",
		"revoke\n-reason",
		"rotate-ca\n--\n-force",
		"unknown\n-h",
	} {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\n")
		c := &recordingClient{}
		err := command(context.Background(), c, args[0], args[1:], io.Discard)
		if len(c.reqs) > 1 {
			t.Fatalf("%q sent %d requests", args, len(c.reqs))
		}
		if len(c.reqs) == 0 {
			if err == nil && args[0] != "" {
				t.Fatalf("%q did nothing and reported no error", args)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q sent a request and failed: %v", args, err)
		}
		asked := slices.ContainsFunc(args[1:], func(a string) bool {
			return strings.HasPrefix(strings.TrimLeft(a, "-"), "force") && strings.HasPrefix(a, "-")
		})
		switch r := c.reqs[0].(type) {
		case *kmsv1.GetCAStatusRequest:
			if args[0] != "status" {
				t.Fatalf("%q asked for the status", args)
			}
		case *kmsv1.RotateCARequest:
			if args[0] != "rotate-ca" || r.GetStep() == kmsv1.RotationStep_ROTATION_STEP_UNSPECIFIED {
				t.Fatalf("%q sent rotation step %s", args, r.GetStep())
			}
			if r.GetForce() && !asked {
				t.Fatalf("%q forced a retirement it did not ask for", args)
			}
		case *kmsv1.ForceRotateIdentityRequest:
			checkIdentityArg(t, args, "force-rotate", r.GetSpiffeId())
		case *kmsv1.RevokeIdentityRequest:
			checkIdentityArg(t, args, "revoke", r.GetSpiffeId())
		}
	})
}

func checkIdentityArg(t *testing.T, args []string, cmd, id string) {
	t.Helper()
	if args[0] != cmd || !slices.Contains(args[1:], id) || strings.HasPrefix(id, "-") && id != "-" {
		t.Fatalf("%q sent %s for %q", args, cmd, id)
	}
}

// Command portcullisctl is the operator's CLI for kms-adapter's admin API: CA and JWT signing key
// rotation, forced rotation and revocation of an identity. It authenticates with the admin certificate
// (spiffe://<td>/portcullis/admin).
//
//	portcullisctl [flags] status
//	portcullisctl [flags] rotate-ca prepare|activate|retire [-force]
//	portcullisctl [flags] jwt-status
//	portcullisctl [flags] rotate-jwt prepare|activate|retire [-force]
//	portcullisctl [flags] force-rotate [-reason R] spiffe://td/ns/N/sa/S
//	portcullisctl [flags] revoke [-reason R] spiffe://td/ns/N/sa/S
//	portcullisctl bootstrap -namespace NS [flags]   (in-cluster control-plane identities; see bootstrap.go)
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
	"github.com/portcullis-mesh/portcullis/tools/stack"
)

func main() {
	run := run
	if len(os.Args) > 1 && os.Args[1] == "bootstrap" { // needs no admin TLS flags: see bootstrap.go
		run = func(args []string, out io.Writer) error { return runBootstrap(args[1:], out) }
	}
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "portcullisctl:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("portcullisctl", flag.ContinueOnError)
	addr := fs.String("kms-addr", "127.0.0.1:15030", "kms-adapter gRPC address")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on the call")
	var files servicetls.Files
	files.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := files.Validate(); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("want a command: status, rotate-ca, jwt-status, rotate-jwt, force-rotate or revoke")
	}
	client, conn, err := stack.DialAdmin(*addr, files)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return command(ctx, client, fs.Arg(0), fs.Args()[1:], out)
}

func command(ctx context.Context, c kmsv1.KMSAdminServiceClient, name string, args []string, out io.Writer) error {
	sub := flag.NewFlagSet(name, flag.ContinueOnError)
	force := sub.Bool("force", false, "rotate-ca/rotate-jwt retire: drop previous roots (keys) now, even if their leaves (tokens) may still be in use")
	reason := sub.String("reason", "", "why (recorded in kms-adapter's log and the event)")
	switch name {
	case "status":
		if _, err := parseArgs(sub, args, 0); err != nil {
			return err
		}
		st, err := c.GetCAStatus(ctx, &kmsv1.GetCAStatusRequest{})
		if err != nil {
			return err
		}
		printStatus(out, st)
	case "rotate-ca":
		step, err := rotationStep(sub, name, args)
		if err != nil {
			return err
		}
		st, err := c.RotateCA(ctx, &kmsv1.RotateCARequest{Step: step, Force: *force})
		if err != nil {
			return err
		}
		printStatus(out, st)
	case "jwt-status":
		if _, err := parseArgs(sub, args, 0); err != nil {
			return err
		}
		st, err := c.GetJWTKeyStatus(ctx, &kmsv1.GetJWTKeyStatusRequest{})
		if err != nil {
			return err
		}
		printJWTStatus(out, st)
	case "rotate-jwt":
		step, err := rotationStep(sub, name, args)
		if err != nil {
			return err
		}
		st, err := c.RotateJWTKey(ctx, &kmsv1.RotateJWTKeyRequest{Step: step, Force: *force})
		if err != nil {
			return err
		}
		printJWTStatus(out, st)
	case "force-rotate":
		pos, err := parseArgs(sub, args, 1, "reason")
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("force-rotate: want one SPIFFE ID")
		}
		r, err := c.ForceRotateIdentity(ctx, &kmsv1.ForceRotateIdentityRequest{SpiffeId: pos[0], Reason: *reason})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "force-rotation of %s announced (event %d)\n", pos[0], r.GetEventSequence())
	case "revoke":
		pos, err := parseArgs(sub, args, 1, "reason")
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("revoke: want one SPIFFE ID")
		}
		r, err := c.RevokeIdentity(ctx, &kmsv1.RevokeIdentityRequest{SpiffeId: pos[0], Reason: *reason})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "certificates of %s issued before %s revoked (event %d)\n", pos[0],
			time.Unix(r.GetRevokedBeforeUnix(), 0).UTC().Format(time.RFC3339), r.GetEventSequence())
	default:
		return fmt.Errorf("unknown command %q: want status, rotate-ca, jwt-status, rotate-jwt, force-rotate or revoke", name)
	}
	return nil
}

// rotationStep reads the one argument of rotate-ca and rotate-jwt (and their -force).
func rotationStep(sub *flag.FlagSet, name string, args []string) (kmsv1.RotationStep, error) {
	steps := map[string]kmsv1.RotationStep{"prepare": kmsv1.RotationStep_ROTATION_STEP_PREPARE,
		"activate": kmsv1.RotationStep_ROTATION_STEP_ACTIVATE, "retire": kmsv1.RotationStep_ROTATION_STEP_RETIRE}
	pos, err := parseArgs(sub, args, 1, "force")
	if err != nil {
		return 0, err
	}
	step, ok := kmsv1.RotationStep(0), len(pos) == 1
	if ok {
		step, ok = steps[pos[0]]
	}
	if !ok {
		return 0, fmt.Errorf("%s: want prepare, activate or retire, got %q", name, strings.Join(pos, " "))
	}
	return step, nil
}

func printJWTStatus(out io.Writer, st *kmsv1.JWTKeyStatus) {
	fmt.Fprintf(out, "jwt bundle version  %d\n", st.GetBundleVersion())
	for _, k := range st.GetKeys() {
		line := fmt.Sprintf("%-9s key  %s (created %s)", k.GetState(), k.GetKeyId(), k.GetCreatedAt().AsTime().UTC().Format(time.RFC3339))
		if k.GetUsableUntil() != nil {
			line += ", published until " + k.GetUsableUntil().AsTime().UTC().Format(time.RFC3339)
		}
		fmt.Fprintln(out, line)
	}
	if st.GetNextStepAt() != nil {
		fmt.Fprintf(out, "next step at        %s\n", st.GetNextStepAt().AsTime().UTC().Format(time.RFC3339))
	}
}

func printStatus(out io.Writer, st *kmsv1.CAStatus) {
	fp := func(der []byte) string { sum := sha256.Sum256(der); return hex.EncodeToString(sum[:8]) }
	fmt.Fprintf(out, "bundle version  %d\nactive root     %s\n", st.GetBundleVersion(), fp(st.GetActive().GetRoot()))
	if st.GetNext() != nil {
		fmt.Fprintf(out, "next root       %s (prepared)\n", fp(st.GetNext().GetRoot()))
	}
	for _, p := range st.GetPrevious() {
		fmt.Fprintf(out, "previous root   %s (retire at %s)\n", fp(p.GetRoot()), time.Unix(p.GetRetireAtUnix(), 0).UTC().Format(time.RFC3339))
	}
	if st.GetNextStep() != kmsv1.RotationStep_ROTATION_STEP_UNSPECIFIED {
		fmt.Fprintf(out, "next step       %s at %s\n", st.GetNextStep(), time.Unix(st.GetNextStepAtUnix(), 0).UTC().Format(time.RFC3339))
	}
}

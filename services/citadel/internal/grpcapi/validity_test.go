package grpcapi

import (
	"context"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/portcullis-mesh/portcullis/libs/workloadtoken"
	authv1 "github.com/portcullis-mesh/portcullis/proto/istio/v1/auth"

	"github.com/portcullis-mesh/portcullis/services/citadel/internal/issuer"
)

// validity_duration is seconds in an int64; multiplying it into a time.Duration must not wrap.
func TestValidityDurationOutOfRangeIsInvalidArgument(t *testing.T) {
	h := newHarness(t, harnessConfig{maxTTL: 48 * time.Hour})
	c, tok := h.nodeClient("node-a"), h.token(cartWorkload)
	call := func(seconds int64) (*authv1.IstioCertificateResponse, error) {
		csr, _ := newCSR(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, workloadtoken.GRPCMetadataKey, "Bearer "+tok)
		return c.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csr, ValidityDuration: seconds})
	}
	for _, seconds := range []int64{math.MinInt64, -1, math.MaxInt64, issuer.MaxValiditySeconds + 1, math.MaxInt64 / 1000} {
		t.Run(strconv.FormatInt(seconds, 10), func(t *testing.T) {
			_, err := call(seconds)
			st := wantCode(t, err, codes.InvalidArgument)
			want := "want 0 (the default TTL) to " + strconv.FormatInt(issuer.MaxValiditySeconds, 10) + " seconds"
			if !strings.Contains(st.Message(), want) || !strings.Contains(st.Message(), strconv.FormatInt(seconds, 10)) {
				t.Errorf("message %q does not name the value and the allowed range (%q)", st.Message(), want)
			}
		})
	}
	// The largest value that fits is accepted and clamped, like any request above the max TTL.
	resp, err := call(issuer.MaxValiditySeconds)
	if err != nil {
		t.Fatalf("validity_duration %d: %v", issuer.MaxValiditySeconds, err)
	}
	leaf := parseChain(t, resp.GetCertChain())[0]
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 48*time.Hour {
		t.Errorf("largest validity_duration gave a %s certificate, want the 48h max TTL", got)
	}
	if n := h.kms.Signs.Load(); n != 1 {
		t.Errorf("kms-adapter signed %d times, want 1 (only the accepted request)", n)
	}
}

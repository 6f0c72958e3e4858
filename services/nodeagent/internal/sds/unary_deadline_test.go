package sds_test

import (
	"bytes"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/portcullis-mesh/portcullis/services/nodeagent/internal/sdslimits"
)

// A FetchSecrets call whose request never arrives (headers, no body) used to hold gRPC's handler
// goroutine forever: gRPC reads a unary request before any interceptor runs. It ends at the
// first-request deadline too. Spoken as raw HTTP/2, since a gRPC client always sends the body.
func TestUnaryCallWithoutRequestEndsAtTheDeadline(t *testing.T) {
	h := newHarness(t, limited(nil))
	conn, err := net.Dial("unix", h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", "localhost"},
		{":path", "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the call to wait for its request", func() bool { return h.obs.unauthenticated() == 1 })
	h.clk.Step(firstRequestTimeout)

	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the agent's answer: %v", err)
		}
		mh, ok := f.(*http2.MetaHeadersFrame)
		if !ok || mh.StreamID != 1 {
			continue
		}
		got := ""
		for _, hf := range mh.Fields {
			if hf.Name == "grpc-status" {
				got = hf.Value
			}
		}
		if got == "" {
			continue // the response headers; the status comes in the trailers
		}
		if want := strconv.Itoa(int(codes.DeadlineExceeded)); got != want {
			t.Fatalf("grpc-status %s, want %s (DeadlineExceeded)", got, want)
		}
		break
	}
	if n := h.obs.limitRefusals(sdslimits.ReasonFirstRequestTimeout); n != 1 {
		t.Errorf("%d first-request timeouts counted, want 1", n)
	}
	eventually(t, "no call to count as unauthenticated", func() bool { return h.obs.unauthenticated() == 0 })
}

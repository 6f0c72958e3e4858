// Command probe is the test image of kubecluster's tests: one static binary whose first argument
// picks what the pod does.
//
//	probe cat FILE          print FILE, exit 0
//	probe http-serve ADDR   answer every HTTP request with "hello from <hostname>"
//	probe http-get URL      GET URL until it answers 200 (30 s), print the body, exit 0
//	probe unix-serve PATH   listen on the Unix socket PATH, write "pong\n" to every connection
//	probe unix-dial PATH    dial PATH until it answers (30 s), print the answer, exit 0
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const retryFor = 30 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: probe cat|http-serve|http-get|unix-serve|unix-dial ARG")
	}
	switch arg := args[1]; args[0] {
	case "cat":
		b, err := os.ReadFile(arg)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(b)
		return err
	case "http-serve":
		host, _ := os.Hostname()
		srv := &http.Server{Addr: arg, ReadHeaderTimeout: 5 * time.Second,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s", host) })}
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	case "http-get":
		return retry(ctx, func() error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, arg, nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET %s: %s", arg, resp.Status)
			}
			fmt.Println(string(body))
			return nil
		})
	case "unix-serve":
		os.Remove(arg)
		l, err := net.Listen("unix", arg)
		if err != nil {
			return err
		}
		go func() { <-ctx.Done(); l.Close() }()
		for {
			conn, err := l.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			_, _ = conn.Write([]byte("pong\n"))
			conn.Close()
		}
	case "unix-dial":
		return retry(ctx, func() error {
			conn, err := net.DialTimeout("unix", arg, 2*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			b, err := io.ReadAll(conn)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(b)
			return err
		})
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// retry runs try every 200 ms until it succeeds or retryFor passes: the server pod may start
// after the client pod.
func retry(ctx context.Context, try func() error) error {
	ctx, cancel := context.WithTimeout(ctx, retryFor)
	defer cancel()
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

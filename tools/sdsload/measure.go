package sdsload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Summary is the distribution of a set of durations.
type Summary struct {
	N                  int
	Min, P50, P99, Max time.Duration
}

// Summarize computes a Summary (nearest-rank percentiles).
func Summarize(d []time.Duration) Summary {
	if len(d) == 0 {
		return Summary{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return Summary{N: len(s), Min: s[0], P50: rank(0.50), P99: rank(0.99), Max: s[len(s)-1]}
}

func (s Summary) String() string {
	return fmt.Sprintf("n=%d min=%s p50=%s p99=%s max=%s", s.N, s.Min.Round(time.Millisecond), s.P50.Round(time.Millisecond), s.P99.Round(time.Millisecond), s.Max.Round(time.Millisecond))
}

// RSS is a process's resident set size in bytes, from /proc/<pid>/status.
func RSS(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// ErrNoSample: the endpoint has no sample of the metric (a counter vector nothing has counted yet).
var ErrNoSample = errors.New("no sample of the metric")

// Metric sums the samples of a metric on a Prometheus text endpoint (http://addr/metrics) whose
// label set contains every one of labels (each `name="value"`).
func Metric(ctx context.Context, addr, name string, labels ...string) (float64, error) {
	body, err := get(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return 0, err
	}
	sum, found := 0.0, false
	for line := range strings.Lines(body) {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		lbls, value := "", strings.TrimSpace(rest)
		if strings.HasPrefix(rest, "{") {
			end := strings.Index(rest, "}")
			if end < 0 {
				continue
			}
			lbls, value = rest[1:end], strings.TrimSpace(rest[end+1:])
		}
		if !containsAll(lbls, labels) {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %w", name, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("%w: %s%v on %s", ErrNoSample, name, labels, addr)
	}
	return sum, nil
}

func containsAll(lbls string, want []string) bool {
	have := strings.Split(lbls, ",")
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// CollectGarbage makes the process behind an admin endpoint run a GC, through pprof's
// heap?gc=1 (served when it runs with PORTCULLIS_PPROF=1). It reports whether that worked;
// without it heap figures include garbage not yet collected.
func CollectGarbage(ctx context.Context, addr string) bool {
	_, err := get(ctx, "http://"+addr+"/debug/pprof/heap?gc=1&debug=0")
	return err == nil
}

func get(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// Package loadgen sends continuous HTTP requests and counts every failure,
// for the swap tests, the demo and the benchmarks. It never retries: it
// sends POSTs, which Go's transport does not replay, so a dropped request
// is counted, not hidden.
package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// Options say what to send.
type Options struct {
	URL      string
	Workers  int
	Duration time.Duration
	// Host, when set, is sent as the Host header.
	Host string
}

// Result counts what happened.
type Result struct {
	OK     int64
	Failed int64
	// Errors holds up to 10 distinct failure descriptions with counts.
	Errors map[string]int64
	// Bodies counts the distinct response bodies seen (truncated to 32
	// bytes), which shows the versions that answered.
	Bodies  map[string]int64
	Elapsed time.Duration
}

func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d requests, %d failed, %.0f req/s", r.OK+r.Failed, r.Failed, float64(r.OK+r.Failed)/max(r.Elapsed.Seconds(), 1e-9))
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "; %d× %s", r.Errors[k], k)
	}
	return b.String()
}

// Run sends requests from opts.Workers goroutines, each on its own
// keep-alive connection, until ctx ends or opts.Duration passes.
func Run(ctx context.Context, opts Options) Result {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Duration)
		defer cancel()
	}
	start := time.Now()
	var mu sync.Mutex
	res := Result{Errors: map[string]int64{}, Bodies: map[string]int64{}}
	record := func(ok bool, what string) {
		mu.Lock()
		defer mu.Unlock()
		if ok {
			res.OK++
			res.Bodies[what]++
			return
		}
		res.Failed++
		if _, seen := res.Errors[what]; seen || len(res.Errors) < 10 {
			res.Errors[what]++
		}
	}
	var wg sync.WaitGroup
	for range opts.Workers {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true, Proxy: nil}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			payload := []byte("ping")
			for ctx.Err() == nil {
				req, _ := http.NewRequest(http.MethodPost, opts.URL, bytes.NewReader(payload))
				if opts.Host != "" {
					req.Host = opts.Host
				}
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					record(false, err.Error())
					continue
				}
				body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
				switch {
				case err != nil:
					record(false, "reading body: "+err.Error())
				case resp.StatusCode >= 400:
					record(false, fmt.Sprintf("status %d: %.80s", resp.StatusCode, body))
				default:
					record(true, string(body[:min(len(body), 32)]))
				}
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// Package loadgen sends continuous HTTP requests and counts every failure,
// for the swap tests, the demo and the benchmarks. It never retries: it
// sends POSTs, which Go's transport does not replay, so a dropped request
// is counted, not hidden.
package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"maps"
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
	// TLS, when set, is the client's TLS configuration for an https://
	// URL; HTTP/2 is then used when the server offers it, unless HTTP1.
	TLS *tls.Config
	// HTTP1 keeps an https:// load on HTTP/1.1 (no ALPN).
	HTTP1 bool
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

// bodyKey is how Result.Bodies keys a response body: its first 32 bytes.
func bodyKey(body string) string { return body[:min(len(body), 32)] }

// Run sends requests from opts.Workers goroutines, each on its own
// keep-alive connection, until ctx ends or opts.Duration passes.
func Run(ctx context.Context, opts Options) Result {
	l := newLoad()
	l.run(ctx, opts)
	return l.Now()
}

// Load is a Run going on in the background, which a test can watch while
// it runs.
type Load struct {
	cancel context.CancelFunc
	done   chan struct{}
	start  time.Time

	mu       sync.Mutex
	res      Result
	finished bool
}

// Start sends requests as Run does, in the background, until Stop is
// called or opts.Duration passes.
func Start(opts Options) *Load {
	ctx, cancel := context.WithCancel(context.Background())
	l := newLoad()
	l.cancel, l.done = cancel, make(chan struct{})
	go func() {
		defer close(l.done)
		l.run(ctx, opts)
	}()
	return l
}

func newLoad() *Load {
	return &Load{start: time.Now(), res: Result{Errors: map[string]int64{}, Bodies: map[string]int64{}}}
}

// Stop ends the load and returns what happened.
func (l *Load) Stop() Result {
	l.cancel()
	<-l.done
	return l.Now()
}

// Now returns the counts so far.
func (l *Load) Now() Result {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.res
	r.Errors, r.Bodies = maps.Clone(r.Errors), maps.Clone(r.Bodies)
	if !l.finished {
		r.Elapsed = time.Since(l.start)
	}
	return r
}

// Answers counts the answers so far whose body was body (compared, as
// Result.Bodies keys them, on the first 32 bytes).
func (l *Load) Answers(body string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res.Bodies[bodyKey(body)]
}

func (l *Load) record(ok bool, what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	res := &l.res
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

// run sends the requests until ctx ends or opts.Duration passes.
func (l *Load) run(ctx context.Context, opts Options) {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	for range opts.Workers {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true, Proxy: nil}
			if opts.TLS != nil {
				// Each its own: the transport adds HTTP/2 to it.
				tr.TLSClientConfig, tr.ForceAttemptHTTP2 = opts.TLS.Clone(), !opts.HTTP1
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			payload := []byte("ping")
			for ctx.Err() == nil {
				req, _ := http.NewRequest(http.MethodPost, opts.URL, bytes.NewReader(payload))
				// Without GetBody no transport sends a request twice,
				// not even HTTP/2's after a GOAWAY.
				req.GetBody = nil
				if opts.Host != "" {
					req.Host = opts.Host
				}
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					l.record(false, err.Error())
					continue
				}
				body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
				switch {
				case err != nil:
					l.record(false, "reading body: "+err.Error())
				case resp.StatusCode >= 400:
					l.record(false, fmt.Sprintf("status %d: %.80s", resp.StatusCode, body))
				default:
					l.record(true, bodyKey(string(body)))
				}
			}
		})
	}
	wg.Wait()
	l.mu.Lock()
	l.res.Elapsed, l.finished = time.Since(l.start), true
	l.mu.Unlock()
}

package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestRemovedAppKeepsNoRoutes is the regression test of a removed app's
// port answering with another app's container: closing an app's port
// left its target set behind, and listening again for the same name
// reused it.
func TestRemovedAppKeepsNoRoutes(t *testing.T) {
	old := backend(t, "someone else", nil) // the address the old container had
	for _, remove := range []struct {
		name string
		do   func(p *Proxy, port int)
	}{
		{"Remove", func(p *Proxy, _ int) { p.Remove("aa", time.Second) }},
		{"Close of the last port", func(p *Proxy, port int) { p.Close(port, time.Second) }},
	} {
		t.Run(remove.name, func(t *testing.T) {
			p := New(Options{BindAddress: "127.0.0.1", StartWait: -1}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			t.Cleanup(func() { p.Shutdown(context.Background()) })
			port := testenv.FreePort(t)
			if err := p.Listen("aa", port); err != nil {
				t.Fatal(err)
			}
			p.Swap("aa", []string{addrOf(old)})
			remove.do(p, port)
			if got := p.Targets("aa"); len(got) != 0 {
				t.Fatalf("targets after removal = %v", got)
			}
			// A new deploy of the same name opens the port again before
			// its container is healthy.
			if err := listenAgain(p, "aa", port); err != nil {
				t.Fatal(err)
			}
			code, body, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
			if code != http.StatusServiceUnavailable || strings.Contains(body, "someone else") {
				t.Errorf("the re-opened port answered %d %q, want 503 and nothing of the old target", code, body)
			}
		})
	}
}

// listenAgain listens on a port that was just closed: the listener goes
// away at once, but the kernel may take a moment to let it be bound again.
func listenAgain(p *Proxy, app string, port int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := p.Listen(app, port)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPortChangeKeepsTargets: closing one of two ports is not removing
// the app.
func TestPortChangeKeepsTargets(t *testing.T) {
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(backend(t, "a", nil))})
	second := testenv.FreePort(t)
	if err := p.Listen("web", second); err != nil {
		t.Fatal(err)
	}
	var first int
	fmt.Sscanf(url, "http://127.0.0.1:%d", &first)
	p.Close(first, time.Second)
	if code, body, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/", second), nil); code != 200 || body != "a" {
		t.Errorf("the new port answered %d %q", code, body)
	}
}

// TestFirstVersionIsWaitedFor: a request that arrives before the first
// swap waits for it instead of failing.
func TestFirstVersionIsWaitedFor(t *testing.T) {
	p, url := startProxy(t, Options{StartWait: 10 * time.Second}, nil)
	type result struct {
		code int
		body string
	}
	res := make(chan result, 2)
	for _, u := range []string{url + "/fast", url + "/slow-path"} {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, u, nil)
			if strings.HasSuffix(u, "slow-path") {
				req.Header.Set("Expect", "100-continue") // handed to net/http
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				res <- result{0, err.Error()}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			res <- result{resp.StatusCode, string(b)}
		}()
	}
	// Both requests are waiting when the first version arrives.
	waitFor(t, func() bool { return waiting(p, "web") == 2 }, "two requests waiting for a version")
	p.Swap("web", []string{addrOf(backend(t, "v1", nil))})
	for range 2 {
		if r := <-res; r.code != 200 || r.body != "v1" {
			t.Errorf("a request sent before the first version got %d %q, want v1's answer", r.code, r.body)
		}
	}
}

// TestUpstreamTimeoutStartsAtTheApp: the wait for a first version is not
// taken from the app's time to answer (UpstreamTimeout counts from when
// the request is sent to it).
func TestUpstreamTimeoutStartsAtTheApp(t *testing.T) {
	const timeout = 400 * time.Millisecond
	p, url := startProxy(t, Options{StartWait: 10 * time.Second, UpstreamTimeout: timeout}, nil)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(timeout * 3 / 4)
		w.Write([]byte("v1"))
	}))
	t.Cleanup(app.Close)
	res := make(chan string, 1)
	go func() {
		code, body, _ := get(t, url, nil)
		res <- fmt.Sprintf("%d %s", code, body)
	}()
	waitFor(t, func() bool { return waiting(p, "web") == 1 }, "the request waiting for a version")
	time.Sleep(timeout / 2) // a wait that, with the app's, is longer than the timeout
	p.Swap("web", []string{addrOf(app)})
	if got := <-res; got != "200 v1" {
		t.Errorf("got %q, want v1's answer: the app answered within the timeout of being asked", got)
	}
}

// TestUnservedRequestsAreNotTheApps: a request no version could take is
// answered 503 and counted as no_target, never as the app's request.
func TestUnservedRequestsAreNotTheApps(t *testing.T) {
	obs := &countingObserver{}
	p, url := startProxy(t, Options{StartWait: 50 * time.Millisecond, Observer: obs}, nil)
	for range 3 {
		if code, _, hdr := get(t, url, nil); code != 503 || hdr.Get("Retry-After") == "" {
			t.Fatalf("got %d", code)
		}
	}
	waitFor(t, func() bool { return obs.count("no_target") == 3 }, "3 no_target errors")
	p.Swap("web", []string{addrOf(backend(t, "v1", nil))})
	if code, _, _ := get(t, url, nil); code != 200 {
		t.Fatalf("got %d", code)
	}
	waitFor(t, func() bool { return obs.count("done") == 1 }, "one request of the app")
	if n, ok := obs.count("200"), obs.count("503"); n != 1 || ok != 0 {
		t.Errorf("the app's requests: %d of 200, %d of 503; want 1 and 0", n, ok)
	}
}

// TestBothClientSidesForwardAlike sends the same request through the fast
// path and through net/http (HTTP/1.0 is handed over) and compares what
// the app received: one writer of headers means no drift.
func TestBothClientSidesForwardAlike(t *testing.T) {
	got := make(chan http.Header, 2)
	be := backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		got <- h
		fmt.Fprint(w, "ok")
	})
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(be)})
	addr := strings.TrimPrefix(url, "http://")
	head := "Host: shop.example\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-App: yes\r\n\r\n"
	var seen []http.Header
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /x %s\r\n%s", proto, head)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c) // both close after their one response
		c.Close()
		seen = append(seen, <-got)
	}
	for i, h := range seen {
		want := map[string]string{"Host": "shop.example", "X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "shop.example", "X-App": "yes", "X-Secret": "", "Keep-Alive": "", "Connection": ""}
		for k, v := range want {
			if h.Get(k) != v {
				t.Errorf("side %d: %s = %q, want %q (all: %v)", i, k, h.Get(k), v, h)
			}
		}
	}
}

// countingObserver counts what the proxy tells an app's observer:
// "done", each status, "done <version>", each upstream error kind, and
// "<kind> <version>".
type countingObserver struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *countingObserver) App(string) AppObserver { return o }

func (o *countingObserver) add(k string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[k]++
}

func (o *countingObserver) count(k string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[k]
}

func (o *countingObserver) Start() {}

func (o *countingObserver) Done(version, _ string, status int, _ time.Duration, _ int64) {
	o.add("done")
	o.add("done " + version)
	o.add(fmt.Sprint(status))
}

func (o *countingObserver) UpstreamError(version, kind string) {
	o.add(kind)
	o.add(kind + " " + version)
}

// waiting counts the requests of app that wait for a version.
func waiting(p *Proxy, app string) int64 {
	p.mu.Lock()
	s := p.services[app]
	p.mu.Unlock()
	return s.waiting.Load()
}

// waitFor polls cond until it holds, failing the test after 5 seconds.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() error {
		if !cond() {
			return fmt.Errorf("waiting for %s", what)
		}
		return nil
	})
}

// TestShutdownFailsNoRequest shuts the proxy down under a load that does
// not retry, on keep-alive connections through both client sides (fast
// path and net/http, which takes requests that expect 100-continue), with a slow request in
// flight: every request sent before is answered, the last one on each
// connection with "Connection: close", the slow one too, and then the
// port refuses connections. This is what an old agent does once its
// successor took over its ports.
func TestShutdownFailsNoRequest(t *testing.T) {
	be := backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/slow" {
			time.Sleep(700 * time.Millisecond)
		}
		fmt.Fprint(w, "ok")
	})
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(be)})
	var port int
	fmt.Sscanf(url, "http://127.0.0.1:%d", &port)

	type result struct {
		ok, closes int
		failed     []string
	}
	var shutAt atomic.Value
	shutAt.Store(time.Now().Add(time.Hour))
	worker := func(expect bool, res chan<- result) {
		tr := &http.Transport{MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		var r result
		for {
			req, _ := http.NewRequest(http.MethodPost, url+"/", strings.NewReader("ping"))
			if expect {
				req.Header.Set("Expect", "100-continue") // handed to net/http
			}
			sent := time.Now()
			resp, err := client.Do(req)
			var op *net.OpError
			switch {
			case errors.As(err, &op) && op.Op == "dial":
				res <- r // the port is closed: done
				return
			case err != nil:
				r.failed = append(r.failed, fmt.Sprintf("%v (net/http side %v, sent %s after the shutdown began)", err, expect, sent.Sub(shutAt.Load().(time.Time))))
				continue
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || string(b) != "ok" {
				r.failed = append(r.failed, fmt.Sprintf("%d %q %v", resp.StatusCode, b, err))
				continue
			}
			r.ok++
			if resp.Close {
				r.closes++
			}
		}
	}
	res := make(chan result, 6)
	for i := range 6 {
		go worker(i%3 == 0, res)
	}
	slow := make(chan string, 1)
	go func() {
		code, body, _ := get(t, url+"/slow", nil)
		slow <- fmt.Sprint(code, " ", body)
	}()
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shutAt.Store(time.Now())
	go p.Shutdown(ctx)
	closes := 0
	for range 6 {
		select {
		case r := <-res:
			// A worker's connection ends with an answer saying
			// "Connection: close", or, when it stalled for
			// closeIdleAfter, closed idle; no request fails.
			if len(r.failed) > 0 || r.ok == 0 || r.closes > 1 {
				t.Errorf("a worker: %d answered, %d with Connection: close, failed: %q", r.ok, r.closes, r.failed)
			}
			closes += r.closes
		case <-time.After(10 * time.Second):
			t.Fatal("a worker still runs 10s after the port closed")
		}
	}
	if closes == 0 {
		t.Error("no answer said Connection: close")
	}
	if got := <-slow; got != "200 ok" {
		t.Errorf("the slow request in flight got %s", got)
	}
}

// TestRemovedAppAnswersAtOnce: a request that arrives on an open
// keep-alive connection after its app was removed gets 503 at once, and
// the connection closes; it does not wait for a version that will not
// come (StartWait is for a first deploy).
func TestRemovedAppAnswersAtOnce(t *testing.T) {
	t.Run("waiting for a first version", func(t *testing.T) {
		p, url := startProxy(t, Options{StartWait: 10 * time.Second}, nil)
		res := make(chan int, 1)
		go func() {
			code, _, _ := get(t, url, nil)
			res <- code
		}()
		waitFor(t, func() bool { return waiting(p, "web") == 1 }, "the request waiting for a version")
		p.Remove("web", 5*time.Second)
		select {
		case code := <-res:
			if code != 503 {
				t.Errorf("a request waiting when its app was removed got %d, want 503", code)
			}
		case <-time.After(3 * time.Second):
			t.Error("a request waiting when its app was removed still waits (StartWait is 10 s)")
		}
	})

	p, url := startProxy(t, Options{StartWait: 10 * time.Second}, nil)
	p.Swap("web", []string{addrOf(backend(t, "v1", nil))})
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	send := func() *http.Response {
		t.Helper()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := send(); resp.StatusCode != 200 {
		t.Fatalf("before the removal: %d", resp.StatusCode)
	}
	p.Remove("web", 5*time.Second)
	start := time.Now()
	if resp := send(); resp.StatusCode != 503 || !resp.Close || time.Since(start) > time.Second {
		t.Errorf("after the removal: %d, close %v, after %s; want 503 at once, closing", resp.StatusCode, resp.Close, time.Since(start))
	}
}

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// backend starts an httptest server answering with its name.
func backend(t *testing.T, name string, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, name)
		}
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func addrOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

// startProxy returns a proxy listening for app "web" on a loopback port.
func startProxy(t *testing.T, opts Options, logOut io.Writer) (*Proxy, string) {
	t.Helper()
	if logOut == nil {
		logOut = io.Discard
	}
	opts.BindAddress = "127.0.0.1"
	p := New(opts, slog.New(slog.NewJSONHandler(logOut, nil)))
	port := testenv.FreePort(t)
	if err := p.Listen("web", port); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return p, fmt.Sprintf("http://127.0.0.1:%d", port)
}

func get(t *testing.T, url string, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestForwardsWithHeaders(t *testing.T) {
	var got http.Header
	var host string
	be := backend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		got, host = r.Header.Clone(), r.Host
		fmt.Fprint(w, "hello")
	})
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(be)})
	code, body, _ := get(t, url+"/x?y=1", map[string]string{"Host": "shop.example.com", "X-Forwarded-For": "203.0.113.9"})
	if code != 200 || body != "hello" {
		t.Fatalf("got %d %q", code, body)
	}
	if host != "shop.example.com" {
		t.Errorf("Host = %q, want it kept", host)
	}
	if xff := got.Get("X-Forwarded-For"); xff != "203.0.113.9, 127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q", xff)
	}
	if got.Get("X-Forwarded-Proto") != "http" || got.Get("X-Forwarded-Host") != "shop.example.com" {
		t.Errorf("forwarded headers = %v", got)
	}
}

func TestErrorMapping(t *testing.T) {
	slow := backend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	dead := backend(t, "dead", nil)
	deadAddr := addrOf(dead)
	dead.Close()

	t.Run("no target is 503", func(t *testing.T) {
		_, url := startProxy(t, Options{StartWait: -1}, nil)
		code, body, hdr := get(t, url, nil)
		if code != 503 || !strings.Contains(body, "no version") || hdr.Get("Retry-After") == "" {
			t.Errorf("got %d %q", code, body)
		}
	})
	t.Run("refused is 502", func(t *testing.T) {
		p, url := startProxy(t, Options{}, nil)
		p.Swap("web", []string{deadAddr})
		if code, _, _ := get(t, url, nil); code != 502 {
			t.Errorf("got %d", code)
		}
	})
	t.Run("slow is 504", func(t *testing.T) {
		p, url := startProxy(t, Options{UpstreamTimeout: 100 * time.Millisecond}, nil)
		p.Swap("web", []string{addrOf(slow)})
		if code, _, _ := get(t, url, nil); code != 504 {
			t.Errorf("got %d", code)
		}
	})
	t.Run("big body is 413", func(t *testing.T) {
		p, url := startProxy(t, Options{MaxBodyBytes: 1000}, nil)
		p.Swap("web", []string{addrOf(backend(t, "a", nil))})
		resp, err := http.Post(url, "text/plain", bytes.NewReader(make([]byte, 2000)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Errorf("declared length: got %d", resp.StatusCode)
		}
		// A chunked body has no declared length: the limit trips while
		// streaming it to the app.
		pr, pw := io.Pipe()
		go func() { pw.Write(make([]byte, 5000)); pw.Close() }()
		resp, err = http.Post(url, "text/plain", pr)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Errorf("chunked: got %d", resp.StatusCode)
		}
	})
	t.Run("port taken by another app", func(t *testing.T) {
		p, url := startProxy(t, Options{}, nil)
		port := url[strings.LastIndex(url, ":")+1:]
		var n int
		fmt.Sscan(port, &n)
		if err := p.Listen("other", n); err == nil || !strings.Contains(err.Error(), "already serves app web") {
			t.Errorf("err = %v", err)
		}
	})
}

// TestUpstreamDeadlineMoves: the upstream timeout is not moved on every
// request when the one set is about right (moveDeadline), yet each
// request's head still gets the whole timeout, and a body, however slow,
// none. All on one pooled connection to the app.
func TestUpstreamDeadlineMoves(t *testing.T) {
	const timeout = 400 * time.Millisecond
	conns := map[string]bool{}
	var mu sync.Mutex
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr] = true
		mu.Unlock()
		switch r.URL.Path {
		case "/slow": // within the timeout, counted from this request
			time.Sleep(timeout * 3 / 4)
		case "/trickle": // a body that takes longer than the timeout
			w.Header().Set("Content-Length", "10")
			w.Write([]byte("hello"))
			w.(http.Flusher).Flush()
			time.Sleep(timeout * 3 / 2)
			w.Write([]byte("world"))
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(app.Close)
	p, url := startProxy(t, Options{UpstreamTimeout: timeout}, nil)
	p.Swap("web", []string{addrOf(app)})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	t.Cleanup(client.CloseIdleConnections)
	fetch := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}
	if code, body := fetch("/"); code != 200 || body != "ok" {
		t.Fatalf("/: %d %q", code, body)
	}
	// The first request's deadline would end during this one's wait.
	time.Sleep(timeout / 2)
	if code, body := fetch("/slow"); code != 200 || body != "ok" {
		t.Errorf("a head within the timeout of its own request: %d %q", code, body)
	}
	if code, body := fetch("/trickle"); code != 200 || body != "helloworld" {
		t.Errorf("a body slower than the timeout: %d %q", code, body)
	}
	if code, body := fetch("/"); code != 200 || body != "ok" {
		t.Errorf("after the slow body: %d %q", code, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 1 {
		t.Errorf("the requests came on %d connections to the app, want 1 (reused)", len(conns))
	}
}

// TestMoveDeadline: a deadline is set when none is, when it must come
// sooner, or later by more than the slack; cleared only when one is set.
func TestMoveDeadline(t *testing.T) {
	base := time.Unix(1000, 0)
	for _, c := range []struct {
		name     string
		set, to  time.Time
		slack    time.Duration
		wantCall bool
	}{
		{"none set", time.Time{}, base, time.Second, true},
		{"later within the slack", base, base.Add(time.Second), time.Second, false},
		{"later past the slack", base, base.Add(time.Second + 1), time.Second, true},
		{"sooner", base, base.Add(-time.Millisecond), time.Second, true},
		{"the same", base, base, 0, false},
		{"cleared", base, time.Time{}, time.Second, true},
		{"cleared, none set", time.Time{}, time.Time{}, time.Second, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dc := &deadlineConn{}
			set := c.set
			moveDeadline(dc, &set, c.to, c.slack)
			if dc.calls == 1 != c.wantCall || c.wantCall && (!dc.last.Equal(c.to) || !set.Equal(c.to)) || !c.wantCall && !set.Equal(c.set) {
				t.Errorf("calls %d (want one: %v), set %v, conn's %v", dc.calls, c.wantCall, set, dc.last)
			}
		})
	}
}

type deadlineConn struct {
	net.Conn
	calls int
	last  time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error { c.calls++; c.last = t; return nil }

func TestAccessLogIsStructured(t *testing.T) {
	var buf testenv.SyncBuffer
	p, url := startProxy(t, Options{AccessLog: true}, &buf)
	p.Swap("web", []string{addrOf(backend(t, "a", nil))})
	get(t, url+"/path", nil)
	// The line is written once the response is out: wait for it.
	var line map[string]any
	for deadline := time.Now().Add(2 * time.Second); line == nil && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" {
				line = m
			}
		}
	}
	if line == nil {
		t.Fatalf("no request line in %q", buf.String())
	}
	if line["app"] != "web" || line["path"] != "/path" || line["status"] != float64(200) || line["bytes"] != float64(1) || line["method"] != "GET" {
		t.Errorf("access log line = %v", line)
	}
}

func TestDrainLetsInFlightRequestsFinish(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	slow := backend(t, "old", func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		fmt.Fprint(w, "old-done")
	})
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(slow)})
	done := make(chan string, 1)
	go func() { _, body, _ := get(t, url, nil); done <- body }()
	<-started
	retired := p.Swap("web", []string{addrOf(backend(t, "new", nil))})
	if _, body, _ := get(t, url, nil); body != "new" {
		t.Errorf("after swap got %q", body)
	}
	// The drain waits for the request in flight, however long it takes
	// within its timeout, and ends only once it is answered.
	var released atomic.Bool
	type drainEnd struct {
		DrainStats
		afterRelease bool
	}
	drained := make(chan drainEnd, 1)
	go func() {
		st := retired.Drain(context.Background(), 5*time.Second, time.Second)
		drained <- drainEnd{st, released.Load()}
	}()
	waitFor(t, func() bool { return retired.targets[0].draining.Load() }, "the drain to start")
	released.Store(true)
	close(release)
	if body := <-done; body != "old-done" {
		t.Errorf("in-flight request got %q", body)
	}
	if end := <-drained; end.Cut != 0 || !end.afterRelease {
		t.Errorf("drain = %+v, want it to end after the request, with nothing cut", end)
	}
}

func TestDrainCutsStreamsAfterGrace(t *testing.T) {
	sse := backend(t, "sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			if _, err := fmt.Fprint(w, "data: tick\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(sse)})
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Events arrive unbuffered, one at a time.
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: tick\n" {
		t.Fatalf("first event = %q, %v", line, err)
	}
	retired := p.Swap("web", []string{addrOf(backend(t, "new", nil))})
	st := retired.Drain(context.Background(), 10*time.Second, 150*time.Millisecond)
	if st.Cut != 1 || st.Waited > 3*time.Second {
		t.Errorf("drain = %+v, want the stream cut after its grace", st)
	}
	// The client's stream ends (an error or EOF) instead of hanging.
	ended := make(chan struct{})
	go func() { io.Copy(io.Discard, resp.Body); close(ended) }()
	select {
	case <-ended:
	case <-time.After(3 * time.Second):
		t.Error("the client's event stream is still open after the drain cut it")
	}
}

func TestWebsocketUpgradePassesThrough(t *testing.T) {
	// A raw upgrade: the backend switches protocols and echoes bytes.
	be := backend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			w.WriteHeader(400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw)
	})
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(be)})
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	fmt.Fprint(conn, "ping\n")
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo = %q, %v", line, err)
	}
	retired := p.Swap("web", nil)
	if st := retired.Drain(context.Background(), 5*time.Second, 100*time.Millisecond); st.Cut != 1 {
		t.Errorf("drain = %+v, want the websocket cut", st)
	}
	if _, err := br.ReadString('\n'); err == nil {
		t.Error("websocket still open after drain")
	}
}

// TestSwapUnderLoadDropsNothing swaps between backends 100 times while a
// non-retrying client sends POSTs on keep-alive connections; after each
// drain the retired backend is shut down, as the agent stops a container.
func TestSwapUnderLoadDropsNothing(t *testing.T) {
	const swaps = 100
	p, url := startProxy(t, Options{}, nil)
	r := swapUnderLoad(t, p, swaps, loadgen.Options{URL: url, Workers: 16})
	t.Logf("%d swaps: %s", swaps, r)
	if r.Failed != 0 || r.OK < 1000 {
		t.Fatalf("%d swaps: %s", swaps, r)
	}
}

// swapUnderLoad routes app web of p to a new backend swaps times while
// load hammers it, each version taking traffic before it is replaced and
// its server closed once drained, and returns what the load saw.
func swapUnderLoad(t *testing.T, p *Proxy, swaps int, load loadgen.Options) loadgen.Result {
	t.Helper()
	var servers []*httptest.Server
	served := make([]atomic.Int64, swaps+1)
	mk := func(i int) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			served[i].Add(1)
			fmt.Fprintf(w, "v%d", i)
		}))
		servers = append(servers, srv)
		return srv
	}
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	cur := mk(0)
	p.Swap("web", []string{addrOf(cur)})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan loadgen.Result, 1)
	load.Duration = time.Minute
	go func() { res <- loadgen.Run(ctx, load) }()
	for i := 1; i <= swaps; i++ {
		next := mk(i)
		retired := p.Swap("web", []string{addrOf(next)})
		retired.Drain(context.Background(), 5*time.Second, time.Second)
		cur.Close() // the old container stops
		cur = next
		// Each version takes traffic before it is replaced.
		waitFor(t, func() bool { return served[i].Load() > 0 }, fmt.Sprintf("v%d to serve a request", i))
	}
	cancel()
	return <-res
}

// TestHTTPSemantics checks what the fast path must get right beyond a
// plain GET.
func TestHTTPSemantics(t *testing.T) {
	be := backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %d %v %s", r.Method, len(b), r.TransferEncoding, r.Header.Get("Expect"))
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/chunked":
			for i := range 3 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case "/hop":
			w.Header().Set("Connection", "X-Secret")
			w.Header().Set("X-Secret", "hop-by-hop")
			fmt.Fprint(w, r.Header.Get("X-Private")+"|"+r.Header.Get("Keep-Alive"))
		case "/die":
			w.Header().Set("Content-Length", "1000")
			w.Write([]byte("partial"))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		default:
			w.Header().Set("X-Head", "yes")
			fmt.Fprint(w, "body")
		}
	})
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(be)})

	t.Run("chunked request body", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() { pw.Write(make([]byte, 70000)); pw.Close() }()
		resp, err := http.Post(url+"/echo", "application/octet-stream", pr)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "POST 70000 [chunked] " {
			t.Errorf("got %q", b)
		}
	})
	t.Run("expect 100-continue", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPut, url+"/echo", strings.NewReader("hello"))
		req.Header.Set("Expect", "100-continue")
		tr := &http.Transport{ExpectContinueTimeout: 5 * time.Second}
		defer tr.CloseIdleConnections()
		start := time.Now()
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "PUT 5 [] " || time.Since(start) > 3*time.Second {
			t.Errorf("got %q after %s", b, time.Since(start))
		}
	})
	t.Run("HEAD and 204", func(t *testing.T) {
		resp, err := http.Head(url + "/")
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Head") != "yes" {
			t.Fatalf("HEAD: %v %v", resp, err)
		}
		resp.Body.Close()
		if code, body, _ := get(t, url+"/nocontent", nil); code != 204 || body != "" {
			t.Errorf("204: %d %q", code, body)
		}
		// The connection is still usable after both, and a plain response
		// keeps its headers and its length.
		code, body, hdr := get(t, url+"/", nil)
		if code != 200 || body != "body" || hdr.Get("X-Head") != "yes" || len(hdr.Values("Content-Length")) != 1 || hdr.Get("Content-Length") != "4" {
			t.Errorf("after HEAD: %d %q %v", code, body, hdr)
		}
	})
	t.Run("unknown length streams through", func(t *testing.T) {
		if code, body, _ := get(t, url+"/chunked", nil); code != 200 || body != "part0;part1;part2;" {
			t.Errorf("got %d %q", code, body)
		}
	})
	t.Run("hop-by-hop headers stay on their hop", func(t *testing.T) {
		code, body, hdr := get(t, url+"/hop", map[string]string{"Connection": "X-Private", "X-Private": "x", "Keep-Alive": "timeout=5"})
		if code != 200 || body != "|" || hdr.Get("X-Secret") != "" {
			t.Errorf("got %d %q %v", code, body, hdr)
		}
	})
	t.Run("an app dying mid-body cuts the client's response", func(t *testing.T) {
		// The connection must end with the app's: a client left waiting
		// for the rest (until the idle timeout) times out here instead.
		client := &http.Client{Timeout: 10 * time.Second}
		resp, err := client.Get(url + "/die")
		if err != nil {
			return // cut before the head went out: also a failure the client sees
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("reading a truncated response: %v, want the connection cut (unexpected EOF)", err)
		}
	})
}

// TestStaleUpstreamConnections reuses pooled connections that the app
// closed while idle: no request may fail because of it.
func TestStaleUpstreamConnections(t *testing.T) {
	closed := make(chan struct{}, 100)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, "ok")
	}))
	srv.Config.IdleTimeout = 20 * time.Millisecond
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(srv)})
	client := &http.Client{Transport: &http.Transport{}}
	for i := range 30 {
		var resp *http.Response
		var err error
		if i%2 == 0 {
			resp, err = client.Get(url)
		} else {
			resp, err = client.Post(url, "text/plain", strings.NewReader("body"))
		}
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
		// The app closes the proxy's idle connection before the next
		// request, which must not fail because of it.
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("request %d: the app never closed the idle connection", i)
		}
	}
}

// TestRawConnections speaks HTTP on a raw socket: pipelining and
// Connection: close on the fast path, HTTP/1.0 handed to net/http.
func TestRawConnections(t *testing.T) {
	p, url := startProxy(t, Options{}, nil)
	p.Swap("web", []string{addrOf(backend(t, "a", nil))})
	addr := strings.TrimPrefix(url, "http://")
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}
	read := func(br *bufio.Reader) (*http.Response, string) {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}

	c, br := dial()
	fmt.Fprint(c, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	for i := range 3 {
		resp, body := read(br)
		if resp.StatusCode != 200 || body != "a" {
			t.Fatalf("pipelined response %d: %d %q", i, resp.StatusCode, body)
		}
		if i == 2 && !resp.Close {
			t.Error("Connection: close was not answered with close")
		}
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("connection still open after Connection: close")
	}

	c, br = dial()
	fmt.Fprint(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
	resp, body := read(br)
	if resp.StatusCode != 200 || body != "a" || resp.ProtoMinor != 0 {
		t.Errorf("HTTP/1.0: %d %q %s", resp.StatusCode, body, resp.Proto)
	}
}

// TestRequestHeads sends request heads from the internet, well-formed or
// not, over a raw connection to the proxy in front of an app, plain on an
// app's own port and over TLS (HTTP/1.1) on the shared HTTPS port, and
// checks the status lines the client gets, what the app saw, and whether
// the connection is closed after them (nothing more is answered) or still
// serves requests.
func TestRequestHeads(t *testing.T) {
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			testRequestHeads(t, scheme)
		})
	}
}

func testRequestHeads(t *testing.T, scheme string) {
	const headerTimeout = time.Second
	app := backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var seen strings.Builder
		r.Header.Write(&seen)
		fmt.Fprintf(w, "%s %s\r\n%s\r\n%s", r.Method, r.URL.Path, seen.String(), body)
	})
	// The idle timeout is long: a connection closed sooner was closed by
	// the header timeout.
	opts := Options{HeaderTimeout: headerTimeout, IdleTimeout: time.Minute, MaxBodyBytes: 1 << 20}
	var dial func() (net.Conn, error)
	// hsts is what the app's answers must carry.
	hsts, other := "", "https"
	if scheme == "http" {
		p, url := startProxy(t, opts, nil)
		p.Swap("web", []string{addrOf(app)})
		dial = func() (net.Conn, error) { return dialBuffered("tcp", strings.TrimPrefix(url, "http://")) }
	} else {
		certs := newTestCerts(t, "x")
		s := newShared(t, opts, certs)
		s.domains(t, "web", app, Domains{Names: []string{"x"}, HSTSMaxAge: 600})
		hsts, other = "max-age=600", "http"
		dial = func() (net.Conn, error) {
			c, err := dialBuffered("tcp", s.httpsIP)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, &tls.Config{RootCAs: certs.pool(), ServerName: "x", NextProtos: []string{"http/1.1"}})
			if err := tc.Handshake(); err != nil {
				c.Close()
				return nil, err
			}
			return tc, nil
		}
	}

	// head returns a GET's head of exactly size bytes.
	head := func(size int) string {
		h := "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: \r\n\r\n"
		return strings.Replace(h, "X-Big: ", "X-Big: "+strings.Repeat("b", size-len(h)), 1)
	}
	const get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	big := head(12 << 10)
	proto := "X-Forwarded-Proto: " + scheme + "\r\n"
	cases := []struct {
		name string
		send []part
		// want are the status lines of the responses, in order.
		want []string
		// appSees and appMisses are in what the app saw of the first
		// request, and not.
		appSees, appMisses []string
		closed             bool
	}{
		{name: "plain", send: []part{{0, get}}, want: []string{"HTTP/1.1 200 OK"}, appSees: []string{proto}},
		{name: "pipelined", send: []part{{0, get + "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" + get}},
			want: []string{"HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK"}},
		// Kept as they were.
		{name: "hop-by-hop fields named in Connection", send: []part{{0, "GET / HTTP/1.1\r\nHost: x\r\nConnection: X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n\r\n"}},
			want: []string{"HTTP/1.1 200 OK"}, appMisses: []string{"X-Private", "Keep-Alive"}},
		{name: "the client's X-Forwarded-Proto", send: []part{{0, "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: " + other + "\r\n\r\n"}},
			want: []string{"HTTP/1.1 200 OK"}, appSees: []string{proto}, appMisses: []string{"X-Forwarded-Proto: " + other + "\r\n"}},
		{name: "obs-fold", send: []part{{0, "GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n"}},
			want: []string{"HTTP/1.1 200 OK"}, appSees: []string{"X-Fold: a b\r\n"}},
		{name: "conflicting Content-Lengths", send: []part{{0, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"}},
			want: []string{"HTTP/1.1 400 Bad Request"}, closed: true},
		{name: "no Host", send: []part{{0, "GET / HTTP/1.1\r\n\r\n"}}, want: []string{"HTTP/1.1 400 Bad Request: missing required Host header"}, closed: true},
		// Content-Length and Transfer-Encoding: chunked wins, and the
		// pipelined request after it is not answered (RFC 9112, 6.1).
		{name: "Content-Length and chunked", send: []part{{0, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + get}},
			want: []string{"HTTP/1.1 200 OK"}, appSees: []string{"\r\n\r\nabc"}, closed: true},
		{name: "bare LF", send: []part{{0, "GET / HTTP/1.1\nHost: x\n\n"}}, want: []string{"HTTP/1.1 200 OK"}, appSees: []string{proto}},
		{name: "bare LF ending a CRLF head", send: []part{{0, "GET / HTTP/1.1\r\nHost: x\r\n\n"}}, want: []string{"HTTP/1.1 200 OK"}},
		// proxy.max_header_bytes, at its default.
		{name: "head at the bound", send: []part{{0, head(DefaultMaxHeaderBytes)}}, want: []string{"HTTP/1.1 200 OK"}},
		{name: "head a byte over the bound", send: []part{{0, head(DefaultMaxHeaderBytes + 1)}},
			want: []string{"HTTP/1.1 431 Request Header Fields Too Large"}, closed: true},
		// The client writes it all before it reads, as curl does: the
		// proxy must read it to the end rather than reset the connection.
		{name: "4 MiB head", send: []part{{0, head(4 << 20)}},
			want: []string{"HTTP/1.1 431 Request Header Fields Too Large"}, closed: true},
		{name: "body over the bound, sent whole", send: []part{{0, fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 4<<20, make([]byte, 4<<20))}},
			want: []string{"HTTP/1.1 413 Request Entity Too Large"}, closed: true},
		// proxy.header_timeout.
		{name: "slow head, in time", send: []part{{0, "GET / HT"}, {headerTimeout / 3, "TP/1.1\r\nHost: x"}, {headerTimeout / 3, "\r\n\r\n"}},
			want: []string{"HTTP/1.1 200 OK"}},
		{name: "head trickling in", send: append([]part{{0, "GET / HTTP/1.1\r\n"}}, trickle("Host: x\r\n\r\n", headerTimeout/5)...),
			want: []string{"HTTP/1.1 408 Request Timeout"}, closed: true},
		{name: "nothing sent", closed: true},
		// The wait for the second request is the idle timeout's; its
		// head has the header timeout, on the fast path and on net/http's.
		{name: "slow second head", send: []part{{0, get}, {headerTimeout * 3 / 2, "GET / HT"}},
			want: []string{"HTTP/1.1 200 OK", "HTTP/1.1 408 Request Timeout"}, closed: true},
		{name: "slow second head after HTTP/1.0", send: []part{{0, "GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"}, {headerTimeout * 3 / 2, "GET / HT"}},
			want: []string{"HTTP/1.0 200 OK", "HTTP/1.1 408 Request Timeout"}, closed: true},
		// A head handed to net/http mid-way keeps the clock the fast
		// path started: whole at 1.3 s, after a handoff at 0.7 s.
		{name: "slow oversized head", send: []part{{0, big[:4<<10]}, {headerTimeout * 7 / 10, big[4<<10 : 10<<10]}, {headerTimeout * 6 / 10, big[10<<10:]}},
			want: []string{"HTTP/1.1 408 Request Timeout"}, closed: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			for _, p := range tc.send {
				time.Sleep(p.after)
				if _, err := io.WriteString(c, p.send); err != nil {
					t.Fatalf("sending: %v", err)
				}
			}
			br := bufio.NewReader(c)
			for i, want := range tc.want {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i+1, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if got := resp.Proto + " " + resp.Status; got != want {
					t.Fatalf("response %d: %q, want %q (%s)", i+1, got, want, body)
				}
				if got := resp.Header.Get("Strict-Transport-Security"); resp.StatusCode == 200 && got != hsts {
					t.Errorf("response %d: Strict-Transport-Security %q, want %q", i+1, got, hsts)
				}
				if i > 0 {
					continue
				}
				for _, s := range tc.appSees {
					if !strings.Contains(string(body), s) {
						t.Errorf("the app saw %q, without %q", body, s)
					}
				}
				for _, s := range tc.appMisses {
					if strings.Contains(string(body), s) {
						t.Errorf("the app saw %q, with %q", body, s)
					}
				}
			}
			if tc.closed {
				if b, err := br.ReadByte(); err == nil {
					rest, _ := br.Peek(br.Buffered())
					t.Fatalf("connection still open, and it answered %q", append([]byte{b}, rest...))
				} else if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("connection still open")
				}
				return
			}
			// Still open, and in step: another request is answered.
			io.WriteString(c, get)
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
				t.Fatalf("next request on the connection: %v, %v", resp, err)
			}
		})
	}
}

// dialBuffered connects to addr with a modest send buffer. Loopback's
// buffers would take a 4 MiB head whole: with this, the client is still
// sending when the proxy answers, as over the internet.
func dialBuffered(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	return c, nil
}

// part is a piece of what a test client sends, after a pause.
type part struct {
	after time.Duration
	send  string
}

// trickle sends s a byte at a time, each after pause.
func trickle(s string, pause time.Duration) []part {
	out := make([]part, len(s))
	for i := range s {
		out[i] = part{pause, s[i : i+1]}
	}
	return out
}

// FuzzParseHead checks that the fast path's parser never panics and never
// forwards a header line that could split a request, and that the end of a
// head is found at its first empty line, whatever its lines end in.
func FuzzParseHead(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n"))
	f.Add([]byte("POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n"))
	f.Add([]byte("GET / HTTP/1.1\nHost: x\n\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		want := -1
		if i := bytes.Index(b, []byte("\n\n")); i >= 0 {
			want = i + 2
		}
		if i := bytes.Index(b, []byte("\n\r\n")); i >= 0 && (want < 0 || i+3 < want) {
			want = i + 3
		}
		if got := headEnd(b); got != want {
			t.Fatalf("headEnd(%q) = %d, want %d", b, got, want)
		}
		var h fastHead
		if parseHead(b, &h) != nil {
			return
		}
		if h.host == "" || h.length < 0 || strings.ContainsAny(h.uri, " \r\n") {
			t.Fatalf("accepted %q as %+v", b, h)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(h.fields), "\r\n"), "\r\n") {
			if line == "" {
				continue
			}
			if strings.ContainsAny(line, "\r\n\x00") || !strings.Contains(line, ": ") {
				t.Fatalf("forwards a bad line %q from %q", line, b)
			}
		}
	})
}

// FuzzResponseHead checks the fast response parser: no panic, and what it
// accepts is well-formed to forward.
func FuzzResponseHead(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: b\r\n\r\nbody"))
	f.Add([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r response
		ok, _ := parseResponse(bufio.NewReaderSize(bytes.NewReader(b), 16<<10), &r)
		if !ok {
			return
		}
		if r.status < 200 || r.status > 599 || r.length < 0 {
			t.Fatalf("accepted %q as %+v", b, r)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(r.fields), "\r\n"), "\r\n") {
			if line != "" && (strings.ContainsAny(line, "\r\n\x00") || !strings.Contains(line, ":")) {
				t.Fatalf("forwards a bad line %q from %q", line, b)
			}
		}
		if strings.ContainsAny(string(r.statusLine), "\r\n") {
			t.Fatalf("status line %q", r.statusLine)
		}
	})
}

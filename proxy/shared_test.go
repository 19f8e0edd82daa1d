package proxy

import (
	"bufio"
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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// shared is a proxy whose shared ports are free loopback ports.
type shared struct {
	p                *Proxy
	httpPort, https  int
	httpURL, httpsIP string
}

// newShared returns a proxy with shared ports on free loopback ports;
// certs may be nil (no HTTPS).
func newShared(t *testing.T, opts Options, certs Certificates) *shared {
	t.Helper()
	opts.BindAddress = "127.0.0.1"
	opts.HTTPPort, opts.HTTPSPort = testenv.FreePort(t), testenv.FreePort(t)
	if certs != nil {
		opts.Certificates = certs
	}
	p := New(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return &shared{p: p, httpPort: opts.HTTPPort, https: opts.HTTPSPort,
		httpURL: fmt.Sprintf("http://127.0.0.1:%d", opts.HTTPPort), httpsIP: fmt.Sprintf("127.0.0.1:%d", opts.HTTPSPort)}
}

// domains gives app names on the shared ports and routes it to be.
func (s *shared) domains(t *testing.T, app string, be *httptest.Server, d Domains) {
	t.Helper()
	if err := s.p.SetDomains(app, d, time.Second); err != nil {
		t.Fatal(err)
	}
	if be != nil {
		s.p.Swap(app, []string{addrOf(be)})
	}
}

// httpsClient reaches the shared HTTPS port whatever the URL's host, with
// HTTP/2 when h2 is set and HTTP/1.1 otherwise, and follows no redirect.
func (s *shared) httpsClient(certs *testCerts, h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: certs.pool()},
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, s.httpsIP)
		},
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// rawGet sends one request head as it is on a new connection to addr and
// reads the answer: what net/http's side of the proxy serves (HTTP/1.0),
// or a Host no client would send.
func rawGet(t *testing.T, addr, head string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, head)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", head, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// closedPort tells whether nothing listens on port.
func closedPort(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err == nil {
		c.Close()
	}
	return err != nil
}

// TestAppsShareAPortByDomain serves two apps on one port, chosen by Host
// on both client sides, and an unknown host with a plain 404.
func TestAppsShareAPortByDomain(t *testing.T) {
	s := newShared(t, Options{}, nil)
	if !closedPort(s.httpPort) {
		t.Fatal("the shared HTTP port is open while no app has a domain")
	}
	s.domains(t, "a", backend(t, "a", nil), Domains{Names: []string{"a.example.com"}})
	s.domains(t, "b", backend(t, "b", nil), Domains{Names: []string{"b.example.com", "*.w.example.com"}})
	for _, c := range []struct {
		host string
		code int
		body string
	}{
		{"a.example.com", 200, "a"},
		{"A.Example.COM.", 200, "a"},
		{"b.example.com:" + strconv.Itoa(s.httpPort), 200, "b"},
		{"x.w.example.com", 200, "b"},
		{"X-1.W.example.com:80", 200, "b"},
		{"w.example.com", 404, "no app"},     // a wildcard is not its parent
		{"y.x.w.example.com", 404, "no app"}, // nor two labels down
		{"a.example.com.evil.org", 404, "no app"},
		{"unknown.org", 404, "no app"},
		{"127.0.0.1", 404, "no app"},
	} {
		if code, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": c.host}); code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("fast path, Host %s: %d %q, want %d %q", c.host, code, body, c.code, c.body)
		}
		// HTTP/1.0 goes to net/http's side.
		if code, body := rawGet(t, s.httpURL[len("http://"):], "GET / HTTP/1.0\r\nHost: "+c.host+"\r\n\r\n"); code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("net/http, Host %s: %d %q, want %d %q", c.host, code, body, c.code, c.body)
		}
	}
	// The port closes with the last app's domains.
	s.domains(t, "a", nil, Domains{})
	if code, _, _ := get(t, s.httpURL+"/", map[string]string{"Host": "a.example.com"}); code != 404 {
		t.Errorf("a.example.com after a's domains went: %d, want 404", code)
	}
	s.domains(t, "b", nil, Domains{})
	if !closedPort(s.httpPort) {
		t.Error("the shared HTTP port is still open with no domains left")
	}
}

// TestOwnRepliesTakeNoTime: the proxy's own 404 on a keep-alive
// connection that has carried a request is logged as taking no time, not
// the time since that request began.
func TestOwnRepliesTakeNoTime(t *testing.T) {
	var log testenv.SyncBuffer
	s := newShared(t, Options{AccessLog: true, AccessLogOutput: &log}, nil)
	s.domains(t, "a", backend(t, "a", nil), Domains{Names: []string{"a.example.com"}})
	c, err := net.Dial("tcp", s.httpURL[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	ask := func(host string, want int) {
		t.Helper()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s: %d, want %d", host, resp.StatusCode, want)
		}
	}
	ask("a.example.com", 200)
	time.Sleep(300 * time.Millisecond) // the time a stale start would count
	ask("unknown.org", 404)
	var line struct {
		Status     int     `json:"status"`
		DurationMS float64 `json:"duration_ms"`
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &line); err != nil || line.Status != 404 || line.DurationMS != 0 {
		t.Errorf("the 404's line %q: %+v, %v; want status 404 and duration_ms 0", lines[len(lines)-1], line, err)
	}
}

// TestUnknownHostGoesToDefaultApp: proxy.default_app answers the hosts no
// domain claims, on the shared port, besides its own port.
func TestUnknownHostGoesToDefaultApp(t *testing.T) {
	s := newShared(t, Options{DefaultApp: "main"}, nil)
	own := testenv.FreePort(t)
	if err := s.p.Listen("main", own); err != nil {
		t.Fatal(err)
	}
	s.p.Swap("main", []string{addrOf(backend(t, "main", nil))})
	s.domains(t, "a", backend(t, "a", nil), Domains{Names: []string{"a.example.com"}})
	for host, want := range map[string]string{"a.example.com": "a", "unknown.org": "main", "": "main"} {
		if code, body := rawGet(t, s.httpURL[len("http://"):], "GET / HTTP/1.0\r\nHost: "+host+"\r\n\r\n"); code != 200 || body != want {
			t.Errorf("Host %q: %d %q, want %s", host, code, body, want)
		}
	}
	if _, body, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/", own), nil); body != "main" {
		t.Errorf("the default app's own port answered %q", body)
	}
	// Another app cannot take the shared port as its own.
	if err := s.p.Listen("other", s.httpPort); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "proxy.default_app main") {
		t.Errorf("Listen on the shared port: %v", err)
	}
	// Without the default app, unknown hosts get 404 again.
	s.p.Remove("main", time.Second)
	if code, _, _ := get(t, s.httpURL+"/", map[string]string{"Host": "unknown.org"}); code != 404 {
		t.Errorf("unknown host with the default app removed: %d", code)
	}
}

// TestDomainClash: a name is one app's; a clash names the app that holds
// it and changes nothing. A wildcard does not clash with a name under it.
func TestDomainClash(t *testing.T) {
	s := newShared(t, Options{}, nil)
	s.domains(t, "a", backend(t, "a", nil), Domains{Names: []string{"x.example.com"}})
	err := s.p.SetDomains("b", Domains{Names: []string{"y.example.com", "x.example.com"}}, time.Second)
	if !errors.Is(err, ErrDomainTaken) || !strings.Contains(err.Error(), "x.example.com is served by app a") {
		t.Fatalf("clash: %v", err)
	}
	if d := s.p.DomainsOf("b"); len(d.Names) != 0 {
		t.Errorf("b has %v after a refused change", d.Names)
	}
	if code, _, _ := get(t, s.httpURL+"/", map[string]string{"Host": "y.example.com"}); code != 404 {
		t.Errorf("y.example.com after the refused change: %d, want 404", code)
	}
	s.domains(t, "b", backend(t, "b", nil), Domains{Names: []string{"*.example.com"}})
	for host, want := range map[string]string{"x.example.com": "a", "z.example.com": "b"} {
		if _, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": host}); body != want {
			t.Errorf("%s: %q, want %s (an exact name wins over a wildcard)", host, body, want)
		}
	}
}

// TestRemovedAppHostsGet404: a removed app's hosts get 404, never another
// app, and its targets go.
func TestRemovedAppHostsGet404(t *testing.T) {
	s := newShared(t, Options{StartWait: -1}, nil)
	s.domains(t, "gone", backend(t, "gone", nil), Domains{Names: []string{"gone.example.com"}})
	s.domains(t, "stays", backend(t, "stays", nil), Domains{Names: []string{"stays.example.com"}})
	if _, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": "gone.example.com"}); body != "gone" {
		t.Fatalf("before removal: %q", body)
	}
	s.p.Remove("gone", time.Second)
	if code, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": "gone.example.com"}); code != 404 {
		t.Errorf("a removed app's host: %d %q, want 404", code, body)
	}
	if got := s.p.Targets("gone"); len(got) != 0 {
		t.Errorf("targets of the removed app: %v", got)
	}
	if _, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": "stays.example.com"}); body != "stays" {
		t.Errorf("the other app: %q", body)
	}
	// A new deploy of the same name starts with no targets.
	s.domains(t, "gone", nil, Domains{Names: []string{"gone.example.com"}})
	if code, _, _ := get(t, s.httpURL+"/", map[string]string{"Host": "gone.example.com"}); code != 503 {
		t.Errorf("the name served again before a route: %d, want 503", code)
	}
}

// TestSharedPortIsAlsoAnOwnPort: an app without domains whose own port is
// the shared HTTP port keeps it, and answers the hosts no domain claims.
func TestSharedPortIsAlsoAnOwnPort(t *testing.T) {
	s := newShared(t, Options{}, nil)
	if err := s.p.Listen("legacy", s.httpPort); err != nil {
		t.Fatal(err)
	}
	s.p.Swap("legacy", []string{addrOf(backend(t, "legacy", nil))})
	s.domains(t, "web", backend(t, "web", nil), Domains{Names: []string{"web.example.com"}})
	for host, want := range map[string]string{"web.example.com": "web", "anything.org": "legacy"} {
		if _, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": host}); body != want {
			t.Errorf("%s: %q, want %s", host, body, want)
		}
	}
	if err := s.p.Listen("other", s.httpPort); err == nil || !strings.Contains(err.Error(), "already serves app legacy") {
		t.Errorf("a third app on the port: %v", err)
	}
	// The last domain goes: the port stays legacy's.
	s.domains(t, "web", nil, Domains{})
	if _, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": "web.example.com"}); body != "legacy" {
		t.Errorf("after web's domains went: %q, want legacy", body)
	}
	// Legacy moves to another port: the shared port, wanted by a
	// domain, stays open without it. (Web went with its domains, its
	// routes too: they come back with its next deploy.)
	s.domains(t, "web", backend(t, "web", nil), Domains{Names: []string{"web.example.com"}})
	s.p.Close(s.httpPort, time.Second)
	if code, _, _ := get(t, s.httpURL+"/", map[string]string{"Host": "anything.org"}); code != 404 {
		t.Errorf("after legacy left: %d, want 404", code)
	}
	if _, body, _ := get(t, s.httpURL+"/", map[string]string{"Host": "web.example.com"}); body != "web" {
		t.Errorf("web after legacy left: %q", body)
	}
}

// TestSharedPortTaken: a shared port another program holds is refused,
// naming the config key, and changes nothing.
func TestSharedPortTaken(t *testing.T) {
	s := newShared(t, Options{}, nil)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = s.p.SetDomains("a", Domains{Names: []string{"a.example.com"}}, time.Second)
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "proxy.http_port") {
		t.Errorf("err = %v", err)
	}
	if d := s.p.DomainsOf("a"); len(d.Names) != 0 {
		t.Errorf("a has %v after the refusal", d.Names)
	}
	// The default app's own port opens the shared ports too: it is
	// refused as a whole, its own port closed again.
	s = newShared(t, Options{DefaultApp: "main"}, nil)
	taken, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	own := testenv.FreePort(t)
	if err := s.p.Listen("main", own); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "proxy.http_port") {
		t.Errorf("the default app with its shared port taken: %v", err)
	}
	if !closedPort(own) {
		t.Error("the default app's own port stayed open after the refusal")
	}
}

// echoProto answers with what the app saw of the client's scheme.
func echoProto(t *testing.T, name string) *httptest.Server {
	return backend(t, name, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s", name, r.Header.Get("X-Forwarded-Proto"))
	})
}

// TestServesHTTPSByDomain: the HTTPS port chooses the certificate by SNI
// and the app by Host, speaks HTTP/2 and HTTP/1.1 over TLS 1.2 or later,
// and the HTTP port redirects there (308), except ACME challenges.
func TestServesHTTPSByDomain(t *testing.T) {
	certs := newTestCerts(t, "a.example.com", "*.w.example.com")
	certs.tokens["tok"] = "tok.thumbprint"
	s := newShared(t, Options{}, certs)
	s.domains(t, "a", echoProto(t, "a"), Domains{Names: []string{"a.example.com"}, HSTSMaxAge: 600})
	s.domains(t, "b", echoProto(t, "b"), Domains{Names: []string{"*.w.example.com"}, NoRedirect: true})
	s.domains(t, "c", echoProto(t, "c"), Domains{Names: []string{"c.example.com"}}) // no certificate

	for _, h2 := range []bool{true, false} {
		client := s.httpsClient(certs, h2)
		for url, want := range map[string]string{
			"https://a.example.com/x":  "a https",
			"https://b1.w.example.com": "b https",
		} {
			resp, err := client.Get(url)
			if err != nil {
				t.Fatalf("h2 %v: %s: %v", h2, url, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != want || (resp.ProtoMajor == 2) != h2 {
				t.Errorf("h2 %v: %s: %s %q, want %q", h2, url, resp.Proto, b, want)
			}
			hsts := resp.Header.Get("Strict-Transport-Security")
			if strings.HasPrefix(url, "https://a.") != (hsts == "max-age=600") {
				t.Errorf("%s: Strict-Transport-Security %q", url, hsts)
			}
		}
	}
	if snis := certs.seen(); !contains(snis, "a.example.com") || !contains(snis, "b1.w.example.com") {
		t.Errorf("certificates were asked for %v", snis)
	}
	// No certificate: no handshake.
	if _, err := s.httpsClient(certs, true).Get("https://c.example.com/"); err == nil {
		t.Error("c.example.com, which has no certificate, answered over HTTPS")
	}

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, c := range []struct{ host, path, code, loc, body string }{
		{"a.example.com", "/x?y=1", "308", fmt.Sprintf("https://a.example.com:%d/x?y=1", s.https), ""},
		{"A.example.com:80", "/", "308", fmt.Sprintf("https://a.example.com:%d/", s.https), ""},
		{"b1.w.example.com", "/", "200", "", "b http"}, // redirect off
		{"c.example.com", "/", "200", "", "c http"},    // no certificate
		{"a.example.com", "/.well-known/acme-challenge/tok", "200", "", "tok.thumbprint"},
	} {
		req, _ := http.NewRequest(http.MethodGet, s.httpURL+c.path, nil)
		req.Host = c.host
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strconv.Itoa(resp.StatusCode) != c.code || resp.Header.Get("Location") != c.loc || (c.body != "" && string(b) != c.body) {
			t.Errorf("http://%s%s: %d Location %q %q", c.host, c.path, resp.StatusCode, resp.Header.Get("Location"), b)
		}
	}

	// TLS 1.1 is refused.
	if c, err := tls.Dial("tcp", s.httpsIP, &tls.Config{RootCAs: certs.pool(), ServerName: "a.example.com", MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
	// An ACME TLS-ALPN-01 connection gets its certificate and is closed.
	c, err := tls.Dial("tcp", s.httpsIP, &tls.Config{RootCAs: certs.pool(), ServerName: "a.example.com", NextProtos: []string{ACMETLS1}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != ACMETLS1 {
		t.Errorf("negotiated %q", p)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the acme-tls/1 connection was not closed: %v", err)
	}
	if certs.challenges != 1 {
		t.Errorf("%d TLS-ALPN-01 hellos reached the certificates", certs.challenges)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestCurlHTTP2 asks curl for HTTP/2 against an app.
func TestCurlHTTP2(t *testing.T) {
	certs := newTestCerts(t, "web.example.com")
	s := newShared(t, Options{}, certs)
	s.domains(t, "web", echoProto(t, "web"), Domains{Names: []string{"web.example.com"}})
	out := testenv.CurlHTTP2(t, certs.ca.File(t), "web.example.com", s.https, "-w", "\n%{http_version}")
	if got := string(out); got != "web https\n2" {
		t.Errorf("curl --http2 printed %q, want the app's answer over HTTP/2", got)
	}
}

// TestSwapOverHTTPSDropsNothing swaps an app served over HTTPS, HTTP/2
// (net/http) and HTTP/1.1 (the fast path over TLS), while a non-retrying
// client hammers it, and counts every failure.
func TestSwapOverHTTPSDropsNothing(t *testing.T) {
	const swaps = 50
	for _, proto := range []string{"h2", "http/1.1"} {
		t.Run(proto, func(t *testing.T) {
			certs := newTestCerts(t, "web.example.com")
			s := newShared(t, Options{}, certs)
			s.domains(t, "web", nil, Domains{Names: []string{"web.example.com"}})
			r := swapUnderLoad(t, s.p, swaps, loadgen.Options{URL: "https://" + s.httpsIP + "/", Host: "web.example.com", Workers: 8,
				TLS: &tls.Config{RootCAs: certs.pool(), ServerName: "web.example.com"}, HTTP1: proto != "h2"})
			t.Logf("%d swaps over HTTPS (%s): %s", swaps, proto, r)
			if r.Failed != 0 || r.OK < 4*swaps {
				t.Fatalf("%d swaps over HTTPS (%s): %s", swaps, proto, r)
			}
		})
	}
}

// TestTLSSessionsResume: a client coming back to the HTTPS port resumes
// its session, with either protocol, instead of a full handshake.
func TestTLSSessionsResume(t *testing.T) {
	certs := newTestCerts(t, "web.example.com")
	s := newShared(t, Options{}, certs)
	s.domains(t, "web", echoProto(t, "web"), Domains{Names: []string{"web.example.com"}})
	for _, proto := range []string{"h2", "http/1.1"} {
		conf := &tls.Config{RootCAs: certs.pool(), ServerName: "web.example.com", NextProtos: []string{proto},
			ClientSessionCache: tls.NewLRUClientSessionCache(1)}
		for i, wantResumed := range []bool{false, true} {
			c, err := tls.Dial("tcp", s.httpsIP, conf)
			if err != nil {
				t.Fatal(err)
			}
			// TLS 1.3 tickets come after the handshake: a request
			// and its answer make sure the client has read them.
			if proto == "http/1.1" {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n")
			} else {
				io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00") // preface, SETTINGS
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			c.Read(make([]byte, 1))
			if got := c.ConnectionState().DidResume; got != wantResumed {
				t.Errorf("%s, connection %d: resumed %v, want %v", proto, i+1, got, wantResumed)
			}
			c.Close()
		}
	}
}

// TestSharedPortNeedsPrivilege: an agent that may not bind a port below
// 1024 refuses the domain with the advice (CAP_NET_BIND_SERVICE, or the
// config key).
func TestSharedPortNeedsPrivilege(t *testing.T) {
	// The kernel's refusal, as an unprivileged bind of port 81 gets it
	// (whatever this host's net.ipv4.ip_unprivileged_port_start and user).
	refuse := func(network, addr string) (net.Listener, error) {
		return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", syscall.EACCES)}
	}
	p := New(Options{BindAddress: "127.0.0.1", HTTPPort: 81, Listen: refuse}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer p.Shutdown(context.Background())
	err := p.SetDomains("a", Domains{Names: []string{"a.example.com"}}, time.Second)
	if err == nil || !strings.Contains(err.Error(), "CAP_NET_BIND_SERVICE") || !strings.Contains(err.Error(), "set proxy.http_port above 1023") {
		t.Fatalf("binding port 81 unprivileged: %v", err)
	}
	t.Log(err)
}

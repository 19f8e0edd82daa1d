package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// benchBackend answers 100 bytes, as TARGETS.md's backend does.
func benchBackend(b *testing.B) *httptest.Server {
	body := []byte(strings.Repeat("x", 99) + "\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	b.Cleanup(srv.Close)
	return srv
}

func hammer(b *testing.B, url string) {
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.SetParallelism(16) // 32 connections on 2 CPUs, as a loaded proxy sees
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// BenchmarkDirect is the baseline: the client talks to the backend.
func BenchmarkDirect(b *testing.B) {
	hammer(b, benchBackend(b).URL)
}

// BenchmarkProxy sends the same requests through the proxy; the difference
// with BenchmarkDirect is what the proxy costs per request (client, proxy
// and backend share the CPUs, so it is an upper bound). The 4-backends case
// balances over four backends (of one version) without an access log; the
// by-domain case is served on the shared HTTP port, chosen by Host.
func BenchmarkProxy(b *testing.B) {
	for _, c := range []struct {
		name      string
		accessLog bool
		backends  int
		byDomain  bool
	}{
		{"no-access-log", false, 1, false},
		{"access-log", true, 1, false},
		{"4-backends", false, 4, false},
		{"by-domain", false, 1, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			var addrs []string
			for range c.backends {
				addrs = append(addrs, strings.TrimPrefix(benchBackend(b).URL, "http://"))
			}
			ln := testenv.FreePort(b)
			p := New(Options{BindAddress: "127.0.0.1", AccessLog: c.accessLog, HTTPPort: ln}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
			var err error
			if c.byDomain {
				// The client's Host is the URL's: 127.0.0.1.
				err = p.SetDomains("bench", Domains{Names: []string{"127.0.0.1"}}, time.Second)
			} else {
				err = p.Listen("bench", ln)
			}
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.Shutdown(b.Context()) })
			p.Swap("bench", addrs)
			hammer(b, "http://127.0.0.1:"+strconv.Itoa(ln)+"/")
		})
	}
}

// BenchmarkPick is the routing decision alone, on 1 and 4 targets of one
// version and on a 90/10 split of 2+2: what balancing adds per request.
func BenchmarkPick(b *testing.B) {
	for _, c := range []struct {
		name     string
		backends []Backend
		split    map[string]int
	}{
		{"1", []Backend{{"a:1", "v1"}}, nil},
		{"4", []Backend{{"a:1", "v1"}, {"b:1", "v1"}, {"c:1", "v1"}, {"d:1", "v1"}}, nil},
		{"split", []Backend{{"a:1", "v1"}, {"b:1", "v1"}, {"c:1", "v2"}, {"d:1", "v2"}}, map[string]int{"v1": 90, "v2": 10}},
	} {
		b.Run(c.name, func(b *testing.B) {
			r, err := newRoutes(c.backends, c.split, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p, _ := r.pick()
					p.t.releaseStream(false)
				}
			})
		})
	}
}

// BenchmarkHostLookup is the shared ports' choice of an app by Host, among
// 1000 domains and 100 wildcards: an exact name, a wildcard one, and
// none.
func BenchmarkHostLookup(b *testing.B) {
	t := &siteTable{exact: map[string]*site{}, wild: map[string]*site{}}
	for i := range 1000 {
		t.exact["shop-"+strconv.Itoa(i)+".example.com"] = &site{}
	}
	for i := range 100 {
		t.wild["tenants-"+strconv.Itoa(i)+".example.com"] = &site{}
	}
	for _, host := range []string{"shop-512.example.com", "acme.tenants-42.example.com:443", "nobody.example.org"} {
		b.Run(host, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				t.lookup(host)
			}
		})
	}
}

package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

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
// and backend share the CPUs, so it is an upper bound).
func BenchmarkProxy(b *testing.B) {
	for _, accessLog := range []bool{false, true} {
		name := "no-access-log"
		if accessLog {
			name = "access-log"
		}
		b.Run(name, func(b *testing.B) {
			be := benchBackend(b)
			p := New(Options{BindAddress: "127.0.0.1", AccessLog: accessLog}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
			ln := testenv.FreePort(b)
			if err := p.Listen("bench", ln); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.Shutdown(b.Context()) })
			p.Swap("bench", []string{strings.TrimPrefix(be.URL, "http://")})
			hammer(b, "http://127.0.0.1:"+strconv.Itoa(ln)+"/")
		})
	}
}

// Command handshakes measures full TLS handshakes per second against an
// https URL: each of -workers loops, for -duration, on a new TCP
// connection, a full TLS handshake (no session is ever resumed: the client
// keeps none), one GET with Connection: close, and the whole response.
// wrk cannot measure this: it resumes its TLS session when it reconnects.
// The key exchange is X25519 only, so that Go's and OpenSSL's servers do
// the same work whatever else they would prefer. It prints handshakes per
// second, the p50 and p99 of one iteration, and the errors.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"
)

func main() {
	rawURL := flag.String("url", "https://localhost:8443/", "https URL to request")
	workers := flag.Int("workers", 16, "concurrent connections")
	duration := flag.Duration("duration", 5*time.Second, "how long to run")
	caFile := flag.String("cacert", "", "PEM file of the CA to trust (default: the system's)")
	sni := flag.String("servername", "", "TLS server name (SNI) and Host (default: the URL's host)")
	flag.Parse()
	if err := run(*rawURL, *workers, *duration, *caFile, *sni); err != nil {
		fmt.Fprintln(os.Stderr, "handshakes:", err)
		os.Exit(2)
	}
}

func run(rawURL string, workers int, duration time.Duration, caFile, sni string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("-url %q: want an https URL, like https://localhost:8443/", rawURL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	if sni == "" {
		sni = u.Hostname()
	}
	conf := &tls.Config{
		ServerName:       sni,
		CurvePreferences: []tls.CurveID{tls.X25519},
		NextProtos:       []string{"http/1.1"},
		// No ClientSessionCache: no session to resume, ever.
		SessionTicketsDisabled: true,
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return fmt.Errorf("-cacert: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-cacert %s: no PEM certificate in it", caFile)
		}
	}
	head := []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + sni + "\r\nConnection: close\r\n\r\n")

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	results := make([]result, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range results {
		wg.Go(func() { results[i] = loop(ctx, addr, conf, head) })
	}
	wg.Wait()
	elapsed := time.Since(start)

	var total result
	total.errors = map[string]int{}
	for _, r := range results {
		total.took = append(total.took, r.took...)
		total.resumed += r.resumed
		if r.version != "" {
			total.version = r.version
		}
		for k, n := range r.errors {
			total.errors[k] += n
		}
	}
	slices.Sort(total.took)
	nerr := 0
	for _, n := range total.errors {
		nerr += n
	}
	fmt.Printf("%d full handshakes in %.2fs, %d workers, %s, X25519\n", len(total.took), elapsed.Seconds(), workers, total.version)
	fmt.Printf("Handshakes/sec: %.2f\n", float64(len(total.took))/elapsed.Seconds())
	fmt.Printf("Latency p50: %.3f ms\n", percentile(total.took, 50))
	fmt.Printf("Latency p99: %.3f ms\n", percentile(total.took, 99))
	fmt.Printf("Errors: %d\n", nerr)
	for k, n := range total.errors {
		fmt.Printf("  %6d× %s\n", n, k)
	}
	if total.resumed > 0 {
		return fmt.Errorf("%d handshakes were resumed, not full", total.resumed)
	}
	if len(total.took) == 0 {
		return errors.New("no handshake succeeded")
	}
	return nil
}

// result is what one worker saw: the time of each good iteration, and
// the failures by message.
type result struct {
	took    []time.Duration
	errors  map[string]int
	resumed int
	version string
}

// loop runs iterations until ctx ends.
func loop(ctx context.Context, addr string, conf *tls.Config, head []byte) result {
	r := result{errors: map[string]int{}}
	br := bufio.NewReaderSize(nil, 4<<10)
	end, _ := ctx.Deadline()
	for ctx.Err() == nil {
		t0 := time.Now()
		st, err := once(ctx, addr, conf, head, br)
		if ctx.Err() != nil || !time.Now().Before(end) {
			// Cut by the end of the run (whose deadline a dial may see
			// before ctx says so): not the server's failure.
			break
		}
		if err != nil {
			if len(r.errors) < 10 || r.errors[err.Error()] > 0 {
				r.errors[err.Error()]++
			}
			continue
		}
		r.took = append(r.took, time.Since(t0))
		if st.DidResume {
			r.resumed++
		}
		r.version = tls.VersionName(st.Version)
	}
	return r
}

// once is one iteration: connect, handshake, GET, read the response to its
// end.
func once(ctx context.Context, addr string, conf *tls.Config, head []byte, br *bufio.Reader) (tls.ConnectionState, error) {
	d := &tls.Dialer{Config: conf}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(head); err != nil {
		return tls.ConnectionState{}, err
	}
	br.Reset(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return tls.ConnectionState{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return tls.ConnectionState{}, fmt.Errorf("status %s", resp.Status)
	}
	return tc.ConnectionState(), nil
}

// percentile returns the p-th percentile of sorted durations, in ms.
func percentile(sorted []time.Duration, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return float64(sorted[max(i-1, 0)].Microseconds()) / 1000
}

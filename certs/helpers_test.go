package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// The method sets the proxy and the agent take (proxy.Certificates,
// agent.CertManager), declared here as this package may import neither.
type proxyCertificates interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool
	Covers(host string) bool
}

type agentCertManager interface {
	proxyCertificates
	Manage(domains []string)
}

var _ agentCertManager = (*Manager)(nil)

// frontend plays the proxy's part: HTTP on one loopback port, answering
// the CA's HTTP-01 requests and else "plain", and TLS on another with
// the manager's certificates, offering acme-tls/1 for TLS-ALPN-01. It
// counts the challenges it answered.
type frontend struct {
	httpPort, tlsPort int
	http01, alpn01    atomic.Int64
}

func serve(t *testing.T, certs proxyCertificates) *frontend {
	t.Helper()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, certs, hl, tl)
}

// serveOn is serve on the listeners given, HTTP and TLS.
func serveOn(t *testing.T, certs proxyCertificates, hl, tl net.Listener) *frontend {
	t.Helper()
	f := &frontend{}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if certs.HandleHTTPChallenge(w, r) {
			f.http01.Add(1)
			return
		}
		io.WriteString(w, "plain")
	})
	f.httpPort, f.tlsPort = hl.Addr().(*net.TCPAddr).Port, tl.Addr().(*net.TCPAddr).Port
	tlsCfg := &tls.Config{
		NextProtos: []string{"http/1.1", ALPNProto},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if isALPNChallenge(hello) {
				f.alpn01.Add(1)
			}
			return certs.GetCertificate(hello)
		},
	}
	// certmagic dials the ports to see that something answers there,
	// which the servers would log as failed handshakes.
	quiet := log.New(io.Discard, "", 0)
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, ErrorLog: quiet}
	ts := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, ErrorLog: quiet}
	go hs.Serve(hl)
	go ts.Serve(tls.NewListener(tl, tlsCfg))
	t.Cleanup(func() { hs.Close(); ts.Close() })
	return f
}

// handshake connects to the frontend's TLS port as a client of domain
// that trusts roots, and returns the certificate it was served.
func (f *frontend) handshake(domain string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", f.tlsPort), &tls.Config{ServerName: domain, RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// acmeOptions are a manager's options against pebble, answering on f's
// ports.
func acmeOptions(t *testing.T, p *testenv.Pebble, f *frontend) Options {
	return Options{
		DataDir: t.TempDir(), Email: "ops@sprout.test", Directory: p.Directory, CARoot: p.CARoot,
		ListenHost: "127.0.0.1", HTTPPort: f.httpPort, TLSPort: f.tlsPort,
		FirstRetry: 500 * time.Millisecond, RenewCheckInterval: time.Second,
	}
}

// testLogger logs at debug level into a buffer, so that tests see all
// that certmagic says too.
func testLogger() (*slog.Logger, *testenv.SyncBuffer) {
	buf := &testenv.SyncBuffer{}
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// lazyCerts is a proxyCertificates whose manager is set after the
// frontend starts (the manager needs the frontend's ports).
type lazyCerts struct{ m atomic.Pointer[Manager] }

func (l *lazyCerts) GetCertificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return l.m.Load().GetCertificate(h)
}
func (l *lazyCerts) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	return l.m.Load().HandleHTTPChallenge(w, r)
}
func (l *lazyCerts) Covers(host string) bool { return l.m.Load().Covers(host) }

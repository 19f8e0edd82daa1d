package testenv

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// PebbleVersion is the release of Pebble, Let's Encrypt's ACME test
// server, that the certificate tests run. `go install pkg@version` builds
// it and its DNS companion from the Go module proxy into a directory of
// their own (the module and build caches keep later builds quick), without
// adding either to this module's go.mod.
const PebbleVersion = "v2.10.3"

// Pebble is a real ACME CA on loopback, for one test: Pebble validates
// HTTP-01 and TLS-ALPN-01 challenges for real (no PEBBLE_VA_ALWAYS_VALID)
// against the ports the test's server listens on, and resolves names
// through pebble-challtestsrv, whose A records the test sets with Host.
type Pebble struct {
	// Directory is the ACME directory URL (tls.acme.directory).
	Directory string
	// CARoot is a PEM file of the CA that signed Pebble's own HTTPS
	// certificate (tls.acme.ca_root).
	CARoot string
	// Log has both servers' output.
	Log *SyncBuffer

	mgmt   string // Pebble's management API
	dns    string // pebble-challtestsrv's management API
	client *http.Client
}

// PebbleOptions say where Pebble validates and what it issues.
type PebbleOptions struct {
	// HTTPPort and TLSPort are where Pebble connects to validate
	// HTTP-01 and TLS-ALPN-01 challenges.
	HTTPPort, TLSPort int
	// Validity of the certificates issued; 0 for Pebble's 90 days.
	Validity time.Duration
}

var (
	pebbleOnce sync.Once
	pebbleDir  string
	pebbleErr  error
)

// pebbleBinaries builds pebble and pebble-challtestsrv once per test
// binary and returns their directory.
func pebbleBinaries() (string, error) {
	pebbleOnce.Do(func() {
		pebbleDir, pebbleErr = os.MkdirTemp("", "sprout-pebble-")
		if pebbleErr != nil {
			return
		}
		cmd := exec.Command("go", "install",
			"github.com/letsencrypt/pebble/v2/cmd/pebble@"+PebbleVersion,
			"github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@"+PebbleVersion)
		cmd.Dir = pebbleDir // outside this module: Pebble builds with its own go.mod
		cmd.Env = append(os.Environ(), "GOBIN="+pebbleDir, "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			pebbleErr = fmt.Errorf("go install pebble@%s: %v\n%s", PebbleVersion, err, out)
		}
	})
	return pebbleDir, pebbleErr
}

// StartPebble builds and starts Pebble and pebble-challtestsrv on loopback
// ports; both stop when the test ends. Without them (no Go module proxy)
// the test is skipped, except under CI, where it fails.
func StartPebble(t testing.TB, o PebbleOptions) *Pebble {
	t.Helper()
	bin, err := pebbleBinaries()
	if err != nil {
		Missing(t, "cannot build Pebble, the ACME test CA: "+err.Error(), "it comes from the Go module proxy: check GOPROXY and the network")
	}
	dir := t.TempDir()
	ca := NewCA(t, "sprout test CA for Pebble's HTTPS")
	certPEM, keyPEM := ca.Issue(t, time.Now().Add(24*time.Hour), "localhost", "127.0.0.1")
	p := &Pebble{CARoot: filepath.Join(dir, "ca.pem"), Log: &SyncBuffer{}}
	writeFile(t, p.CARoot, string(ca.PEM), 0o600)
	writeFile(t, filepath.Join(dir, "cert.pem"), string(certPEM), 0o600)
	writeFile(t, filepath.Join(dir, "key.pem"), string(keyPEM), 0o600)
	p.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}

	dnsPort, dnsMgmt, acmePort, mgmtPort := FreePort(t), FreePort(t), FreePort(t), FreePort(t)
	p.dns = fmt.Sprintf("http://127.0.0.1:%d", dnsMgmt)
	p.mgmt = fmt.Sprintf("https://127.0.0.1:%d", mgmtPort)
	p.Directory = fmt.Sprintf("https://127.0.0.1:%d/dir", acmePort)
	profile := map[string]any{"description": "sprout tests"}
	if o.Validity > 0 {
		profile["validityPeriod"] = int(o.Validity / time.Second)
	}
	cfg, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":           fmt.Sprintf("127.0.0.1:%d", acmePort),
		"managementListenAddress": fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":             filepath.Join(dir, "cert.pem"),
		"privateKey":              filepath.Join(dir, "key.pem"),
		"httpPort":                o.HTTPPort,
		"tlsPort":                 o.TLSPort,
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		"profiles":                map[string]any{"default": profile},
	}})
	writeFile(t, filepath.Join(dir, "pebble.json"), string(cfg), 0o600)

	p.start(t, filepath.Join(bin, "pebble-challtestsrv"), nil,
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort), "-management", fmt.Sprintf("127.0.0.1:%d", dnsMgmt),
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "", "-defaultIPv4", "", "-defaultIPv6", "")
	p.start(t, filepath.Join(bin, "pebble"),
		// No random sleeps before validating, no nonces refused for
		// practice, no authorizations reused: every order is validated.
		[]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"},
		"-config", filepath.Join(dir, "pebble.json"), "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))
	Eventually(t, 30*time.Second, func() error {
		if _, err := p.get(p.Directory); err != nil {
			return fmt.Errorf("pebble: %v\n%s", err, p.Log)
		}
		resp, err := http.Get(p.dns + "/dns-request-history")
		if err != nil {
			return fmt.Errorf("pebble-challtestsrv: %v\n%s", err, p.Log)
		}
		return resp.Body.Close()
	})
	return p
}

// start runs one of the servers until the test ends.
func (p *Pebble) start(t testing.TB, bin string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = p.Log, p.Log
	if err := cmd.Start(); err != nil {
		Missing(t, "cannot start "+filepath.Base(bin)+": "+err.Error(), "see the build above")
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(bin), p.Log)
		}
	})
}

// Host adds ip to host's A records: 127.0.0.1 for the test's server, or
// a loopback address where nothing listens to make validation fail.
func (p *Pebble) Host(t testing.TB, host, ip string) {
	t.Helper()
	p.dnsCall(t, "/add-a", map[string]any{"host": host, "addresses": []string{ip}})
}

// Unhost removes host's A records.
func (p *Pebble) Unhost(t testing.TB, host string) {
	t.Helper()
	p.dnsCall(t, "/clear-a", map[string]any{"host": host})
}

func (p *Pebble) dnsCall(t testing.TB, path string, req map[string]any) {
	t.Helper()
	body, _ := json.Marshal(req)
	resp, err := http.Post(p.dns+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble-challtestsrv %s %v: %s", path, req, resp.Status)
	}
}

// Roots is the pool of Pebble's issuing root, which clients of the
// certificates it issues trust. Pebble makes a new one at each start.
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	b, err := p.get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble /roots/0 is not PEM: %q", b)
	}
	return pool
}

func (p *Pebble) get(url string) ([]byte, error) {
	resp, err := p.client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, err
}

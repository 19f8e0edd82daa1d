package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/certs"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestACMEThroughTheAgent: the real agent, told an ACME CA (Pebble, which
// validates for real through pebble-challtestsrv's DNS), obtains a
// certificate for an app's domain by answering the CA's challenge on its
// own shared ports, serves the app over HTTPS and HTTP/2 with it, and
// redirects plain HTTP there. A second domain that resolves where nobody
// answers fails issuance: `sprout certs` shows the CA's error, and the
// name keeps being served over HTTP.
func TestACMEThroughTheAgent(t *testing.T) {
	httpPort, httpsPort := testenv.FreePort(t), testenv.FreePort(t)
	pebble := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: httpPort, TLSPort: httpsPort})
	good, bad := testenv.Name("shop")+".sprout.test", testenv.Name("lost")+".sprout.test"
	pebble.Host(t, good, "127.0.0.1")
	pebble.Host(t, bad, "127.0.0.2") // nothing listens there

	a := startAgent(t,
		fmt.Sprintf("SPROUT_PROXY_HTTP_PORT=%d", httpPort), fmt.Sprintf("SPROUT_PROXY_HTTPS_PORT=%d", httpsPort),
		"SPROUT_TLS_ACME_EMAIL=ops@sprout.test", "SPROUT_TLS_ACME_DIRECTORY="+pebble.Directory, "SPROUT_TLS_ACME_CA_ROOT="+pebble.CARoot)
	dir := zipDir(t, testenv.Bundle(t, ""))
	a.mustSprout("deploy", dir, "--app", testenv.Name("shop"), "--label", "v1", "--domain", good, "--domain", bad)

	var list []certs.Info
	testenv.Eventually(t, 60*time.Second, func() error {
		out := a.mustSprout("certs", "--json")
		list = nil
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return fmt.Errorf("certs --json: %v: %s", err, out)
		}
		for _, c := range list {
			if c.Name == good && c.Status == "valid" {
				return nil
			}
		}
		return fmt.Errorf("no valid certificate for %s yet: %s\npebble:\n%s", good, out, pebble.Log)
	})

	// HTTPS, HTTP/2, with the certificate Pebble issued.
	roots := pebble.Roots(t)
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", httpsPort))
	}
	tr := &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + good + "/")
	if err != nil {
		t.Fatalf("HTTPS with the certificate from Pebble: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "v1 ") || resp.ProtoMajor != 2 {
		t.Errorf("HTTPS: %s %d %q, want HTTP/2 200 from v1", resp.Proto, resp.StatusCode, body)
	}
	if issuer := resp.TLS.PeerCertificates[0].Issuer.CommonName; !strings.Contains(strings.ToLower(issuer), "pebble") {
		t.Errorf("certificate issued by %q, not Pebble", issuer)
	}

	// Plain HTTP: 308 to HTTPS for the covered name; the name without a
	// certificate is served on HTTP.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 10 * time.Second}
	plain := func(host string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/a?b=1", httpPort), nil)
		req.Host = host
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := plain(good); r.StatusCode != http.StatusPermanentRedirect || r.Header.Get("Location") != fmt.Sprintf("https://%s:%d/a?b=1", good, httpsPort) {
		t.Errorf("plain HTTP for %s: %d, Location %q; want 308 to https", good, r.StatusCode, r.Header.Get("Location"))
	}
	if r := plain(bad); r.StatusCode != 200 {
		t.Errorf("plain HTTP for %s (no certificate): %d, want 200", bad, r.StatusCode)
	}

	// The failed issuance is there with the CA's words and a retry.
	var failed *certs.Info
	testenv.Eventually(t, 60*time.Second, func() error {
		out := a.mustSprout("certs", "--json")
		list = nil
		json.Unmarshal([]byte(out), &list)
		for i, c := range list {
			if c.Name == bad && c.Error != "" {
				failed = &list[i]
				return nil
			}
		}
		return fmt.Errorf("no error reported for %s: %s", bad, out)
	})
	if failed.NextRetry.IsZero() || failed.Status == "valid" {
		t.Errorf("failed issuance: %+v, want an error and a next retry", *failed)
	}
	if out := a.mustSprout("certs"); !strings.Contains(out, bad) || !strings.Contains(out, "next attempt") {
		t.Errorf("sprout certs does not show the failure and its retry:\n%s", out)
	}
}

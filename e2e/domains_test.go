package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestDomains runs apps by domain with the real binary: the shared port
// (proxy.http_port) opens with the first domain, two apps share it by
// Host, an unknown host gets 404, a clash names the app that holds the
// name, and `sprout domains` and `sprout status` show them.
func TestDomains(t *testing.T) {
	httpPort, httpsPort := testenv.FreePort(t), testenv.FreePort(t)
	a := startAgent(t, fmt.Sprintf("SPROUT_PROXY_HTTP_PORT=%d", httpPort), fmt.Sprintf("SPROUT_PROXY_HTTPS_PORT=%d", httpsPort))
	dir := zipDir(t, testenv.Bundle(t, ""))
	own := testenv.Name("own")
	a.mustSprout("deploy", dir, "--app", own, "--label", "o1", "--port", fmt.Sprint(testenv.FreePort(t)))
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort)); err == nil {
		c.Close()
		t.Fatal("the shared HTTP port is open though no app has a domain")
	}

	web, api := testenv.Name("web"), testenv.Name("api")
	out := a.mustSprout("deploy", dir, "--app", web, "--label", "w1", "--domain", web+".example.com", "--domain", "www."+web+".example.com")
	if !strings.Contains(out, "is serving at "+web+".example.com, www."+web+".example.com") {
		t.Errorf("deploy output:\n%s", out)
	}
	a.mustSprout("deploy", dir, "--app", api, "--label", "a1", "--domain", "API."+api+".example.com.")
	hostGet := func(host string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for host, want := range map[string]string{"www." + web + ".example.com": "w1 ", "api." + api + ".example.com": "a1 "} {
		if code, body := hostGet(host); code != 200 || body != want {
			t.Errorf("%s: %d %q, want %q", host, code, body, want)
		}
	}
	if code, _ := hostGet("nobody.example.org"); code != 404 {
		t.Errorf("unknown host: %d, want 404", code)
	}

	_, errOut, code := a.sprout("deploy", dir, "--app", api, "--label", "a2", "--domain", web+".example.com")
	if code != 1 || !strings.Contains(errOut, "domain "+web+".example.com is app "+web+"'s") {
		t.Errorf("clash: exit %d: %s", code, errOut)
	}
	out = a.mustSprout("domains")
	for _, want := range []string{web + "  " + web + ".example.com", api + "  api." + api + ".example.com", "HTTP only"} {
		if !strings.Contains(strings.Join(strings.Fields(out), "  "), strings.Join(strings.Fields(want), "  ")) {
			t.Errorf("sprout domains lacks %q:\n%s", want, out)
		}
	}
	a.mustSprout("domains", "rm", "--app", web, "www."+web+".example.com")
	if code, _ := hostGet("www." + web + ".example.com"); code != 404 {
		t.Errorf("a removed domain: %d, want 404", code)
	}
	if out := a.mustSprout("status", "--app", web); !strings.Contains(strings.Join(strings.Fields(out), " "), "domains: "+web+".example.com (on the shared ports") {
		t.Errorf("status:\n%s", out)
	}
}

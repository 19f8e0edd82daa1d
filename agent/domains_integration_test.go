package agent_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/proxy"
)

// certManager is a CertManager of the tests' own: every domain it is told
// to manage gets a certificate from a CA of the test's at once, as if
// ACME answered instantly.
type certManager struct {
	t  *testing.T
	ca *testenv.CA

	mu      sync.Mutex
	certs   map[string]*tls.Certificate
	managed [][]string
}

func newCertManager(t *testing.T) *certManager {
	return &certManager{t: t, ca: testenv.NewCA(t, "sprout test CA"), certs: map[string]*tls.Certificate{}}
}

func (m *certManager) Manage(domains []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.managed = append(m.managed, slices.Clone(domains))
	for _, d := range domains {
		if m.certs[d] == nil {
			m.certs[d] = m.ca.Leaf(m.t, d)
		}
	}
}

func (m *certManager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.certs[hello.ServerName]; c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("no certificate for %q", hello.ServerName)
}

func (m *certManager) HandleHTTPChallenge(http.ResponseWriter, *http.Request) bool { return false }

func (m *certManager) Covers(host string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.certs[host] != nil
}

// last is the set of domains the manager was last told.
func (m *certManager) last() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.managed) == 0 {
		return nil
	}
	return m.managed[len(m.managed)-1]
}

var _ agent.CertManager = (*certManager)(nil)

// domainHarness is an agent whose proxy has its shared ports on free
// loopback ports; with certs, it serves HTTPS too.
type domainHarness struct {
	*harness
	httpPort, httpsPort int
}

func newDomainHarness(t *testing.T, certs *certManager) *domainHarness {
	t.Helper()
	d := &domainHarness{httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t)}
	h := &harness{proxyOpts: func(o *proxy.Options) {
		o.HTTPPort, o.HTTPSPort = d.httpPort, d.httpsPort
		if certs != nil {
			o.Certificates = certs
		}
	}}
	if certs != nil {
		h.certs = certs
	}
	d.harness = startHarness(t, h)
	return d
}

// hostGet fetches / from the shared HTTP port for host.
func (d *domainHarness) hostGet(t *testing.T, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", d.httpPort), nil)
	req.Host = host
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("GET / for %s: %v", host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// portClosed tells whether nothing listens on port.
func portClosed(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err == nil {
		c.Close()
	}
	return err != nil
}

// TestAppsByDomain: two apps on the shared port by domain, an unknown host
// 404, a clash refused naming the app that holds the name, domains changed
// without a deploy (off its own port and back), kept across an agent
// restart, and a removed app's hosts 404.
func TestAppsByDomain(t *testing.T) {
	t.Parallel()
	h := newDomainHarness(t, nil)
	ctx := context.Background()
	a, b := testenv.Name("doma"), testenv.Name("domb")
	da, db := a+".example.com", b+".example.com"
	ownPort := testenv.FreePort(t)
	dir := testenv.Bundle(t, "")
	h.mustDeploy(a, "a1", dir, map[string]string{"domain": da, "port": fmt.Sprint(ownPort)})
	h.mustDeploy(b, "b1", dir, map[string]string{"domain": db + ",www." + db})
	for host, want := range map[string]string{da: "a1 ", strings.ToUpper(db): "b1 ", "www." + db + ":80": "b1 "} {
		if code, body := h.hostGet(t, host); code != 200 || body != want {
			t.Errorf("%s: %d %q, want %q", host, code, body, want)
		}
	}
	if code, body := h.hostGet(t, "nobody.example.org"); code != 404 {
		t.Errorf("unknown host: %d %q, want 404", code, body)
	}
	if !portClosed(ownPort) {
		t.Errorf("%s has domains, yet its own port %d is open", a, ownPort)
	}
	if st, _ := h.client.Status(ctx, b); !slices.Equal(st.Domains, []string{db, "www." + db}) {
		t.Errorf("status of %s: domains %v", b, st.Domains)
	}

	// A clash is refused before anything is built, naming the holder.
	c := testenv.Name("domc")
	_, _, err := h.deploy(c, "c1", dir, map[string]string{"domain": "www." + db})
	if err == nil || !strings.Contains(err.Error(), "domain www."+db+" is app "+b+"'s") {
		t.Errorf("deploy of %s with %s's domain: %v", c, b, err)
	}
	if _, err := h.client.ChangeDomains(ctx, a, api.DomainChange{Add: []string{db}}, nil); err == nil || !strings.Contains(err.Error(), "app "+b) {
		t.Errorf("domains add of %s's domain to %s: %v", b, a, err)
	}

	// Without a deploy: b gets a domain and loses one.
	if _, err := h.client.ChangeDomains(ctx, b, api.DomainChange{Add: []string{"api." + db}, Remove: []string{"www." + db}}, nil); err != nil {
		t.Fatal(err)
	}
	if code, body := h.hostGet(t, "api."+db); code != 200 || body != "b1 " {
		t.Errorf("api.%s after domains add: %d %q", db, code, body)
	}
	if code, _ := h.hostGet(t, "www."+db); code != 404 {
		t.Errorf("www.%s after domains rm: %d, want 404", db, code)
	}
	list, err := h.client.Domains(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range list.Domains {
		names = append(names, d.App+" "+d.Name)
	}
	slices.Sort(names)
	if want := []string{b + " api." + db, b + " " + db, a + " " + da}; !slices.Equal(names, slices.Sorted(slices.Values(want))) || list.HTTPS {
		t.Errorf("domains = %v (https %v), want %v", names, list.HTTPS, want)
	}

	// a's last domain goes: it is served on its own port again; and
	// back to its domain, off its port.
	if _, err := h.client.ChangeDomains(ctx, a, api.DomainChange{Remove: []string{da}}, nil); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, ownPort, "/"); code != 200 || body != "a1 " {
		t.Errorf("%s on its own port: %d %q", a, code, body)
	}
	if code, _ := h.hostGet(t, da); code != 404 {
		t.Errorf("%s without domains still answers for %s: %d", a, da, code)
	}
	if _, err := h.client.ChangeDomains(ctx, a, api.DomainChange{Add: []string{da}}, nil); err != nil {
		t.Fatal(err)
	}
	if code, body := h.hostGet(t, da); code != 200 || body != "a1 " {
		t.Errorf("%s by domain again: %d %q", a, code, body)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if !portClosed(ownPort) {
			return fmt.Errorf("%s's own port %d is still open", a, ownPort)
		}
		return nil
	})

	// A new deploy keeps the domains; the agent's restart serves them
	// again.
	h.mustDeploy(b, "b2", dir, nil)
	h.restart()
	for host, want := range map[string]string{da: "a1 ", db: "b2 ", "api." + db: "b2 "} {
		if code, body := h.hostGet(t, host); code != 200 || body != want {
			t.Errorf("after the restart, %s: %d %q, want %q", host, code, body, want)
		}
	}

	// A removed app's hosts get 404, not another app.
	if _, err := h.client.RemoveApp(ctx, b, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{db, "api." + db} {
		if code, body := h.hostGet(t, host); code != 404 {
			t.Errorf("%s of the removed app: %d %q, want 404", host, code, body)
		}
	}
	if code, body := h.hostGet(t, da); code != 200 || body != "a1 " {
		t.Errorf("%s after %s's removal: %d %q", da, b, code, body)
	}
	// Its domains are free again.
	h.mustDeploy(c, "c1", dir, map[string]string{"domain": db})
	if code, body := h.hostGet(t, db); code != 200 || body != "c1 " {
		t.Errorf("%s taken by %s: %d %q", db, c, code, body)
	}
}

// TestSwapsOverHTTPSDropNothing deploys versions of an app served by
// domain over HTTPS while non-retrying clients hammer it over TLS, with
// HTTP/2 and with HTTP/1.1, and counts every failed request; curl asks
// for HTTP/2, and plain HTTP is redirected.
func TestSwapsOverHTTPSDropNothing(t *testing.T) {
	t.Parallel()
	const swaps = 5
	certs := newCertManager(t)
	h := newDomainHarness(t, certs)
	app := testenv.Name("tls")
	domain := app + ".example.com"
	dir := testenv.Bundle(t, "")
	h.mustDeploy(app, "v0", dir, map[string]string{"domain": domain, "health_path": "/healthz", "hsts": "600"})
	if got := certs.last(); !slices.Equal(got, []string{domain}) {
		t.Fatalf("the certificate manager was told %v, want [%s]", got, domain)
	}

	loads := map[string]*loadgen.Load{}
	for proto, http1 := range map[string]bool{"HTTP/2": false, "HTTP/1.1": true} {
		load := loadgen.Start(loadgen.Options{URL: fmt.Sprintf("https://127.0.0.1:%d/", h.httpsPort), Host: domain, Workers: 4,
			TLS: &tls.Config{RootCAs: certs.ca.Pool, ServerName: domain}, HTTP1: http1})
		t.Cleanup(func() { load.Stop() })
		loads[proto] = load
	}
	for i := 1; i <= swaps; i++ {
		h.mustDeploy(app, fmt.Sprintf("v%d", i), dir, nil)
	}
	for proto, load := range loads {
		testenv.Answered(t, load, fmt.Sprintf("v%d ", swaps), 20)
		r := load.Stop()
		t.Logf("%d swaps over HTTPS, %s: %s", swaps, proto, r)
		if r.Failed != 0 {
			t.Fatalf("%d requests failed during %d swaps over HTTPS, %s: %s", r.Failed, swaps, proto, r)
		}
		if len(r.Bodies) < swaps {
			t.Errorf("%s: only %d versions answered, want %d", proto, len(r.Bodies), swaps+1)
		}
	}

	out := testenv.CurlHTTP2(t, certs.ca.File(t), domain, h.httpsPort, "-D", "-")
	if s := out; !strings.HasPrefix(s, "HTTP/2 200") || !strings.Contains(s, "strict-transport-security: max-age=600") || !strings.HasSuffix(s, fmt.Sprintf("v%d ", swaps)) {
		t.Errorf("curl --http2 got:\n%s", s)
	}
	code, _ := h.hostGet(t, domain)
	if code != http.StatusPermanentRedirect {
		t.Errorf("plain HTTP: %d, want 308 to HTTPS", code)
	}
	// --https-redirect=false serves plain HTTP too.
	h.mustDeploy(app, "v9", dir, map[string]string{"https_redirect": "false"})
	if code, body := h.hostGet(t, domain); code != 200 || body != "v9 " {
		t.Errorf("plain HTTP with the redirect off: %d %q", code, body)
	}
}

// TestFailedDeployGivesDomainsBack: a deploy that adds domains and fails
// is undone from its journal: the new names go, the old ones keep serving
// the old version, and a failed first deploy leaves no name served.
func TestFailedDeployGivesDomainsBack(t *testing.T) {
	t.Parallel()
	h := newDomainHarness(t, nil)
	ctx := context.Background()
	app, fresh := testenv.Name("undo"), testenv.Name("undonew")
	d1, d2, d3 := app+".example.com", "new."+app+".example.com", fresh+".example.com"
	good := testenv.Bundle(t, "")
	bad := testenv.Bundle(t, "", "ENV APP_HEALTH=500")
	h.mustDeploy(app, "v1", good, map[string]string{"domain": d1, "health_path": "/healthz", "health_deadline": "3s"})
	if _, _, err := h.deploy(app, "v2", bad, map[string]string{"domain": d1 + "," + d2}); err == nil {
		t.Fatal("a version failing its health check was deployed")
	}
	if code, body := h.hostGet(t, d1); code != 200 || body != "v1 " {
		t.Errorf("%s after the failed deploy: %d %q, want v1", d1, code, body)
	}
	if code, _ := h.hostGet(t, d2); code != 404 {
		t.Errorf("%s, which only the failed deploy added: %d, want 404", d2, code)
	}
	if st, _ := h.client.Status(ctx, app); !slices.Equal(st.Domains, []string{d1}) {
		t.Errorf("domains after the failed deploy: %v", st.Domains)
	}
	if _, _, err := h.deploy(fresh, "v1", bad, map[string]string{"domain": d3, "health_path": "/healthz", "health_deadline": "3s"}); err == nil {
		t.Fatal("a version failing its health check was deployed")
	}
	if code, body := h.hostGet(t, d3); code != 404 {
		t.Errorf("%s after a failed first deploy: %d %q, want 404", d3, code, body)
	}
}

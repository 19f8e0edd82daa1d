package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// upgradeHost is an agent run from a binary installed at its own path,
// which upgrades replace, as /usr/local/bin/sprout on a host.
type upgradeHost struct {
	*agentProc
	installed string
	pidFile   string
}

// startUpgradeHost installs the sprout binary bin and starts the agent
// from it. The CLI the test runs is the test's own build, whatever is
// installed.
func startUpgradeHost(t testing.TB, bin string, env ...string) *upgradeHost {
	t.Helper()
	dir := t.TempDir()
	h := &upgradeHost{installed: filepath.Join(dir, "bin", "sprout"), pidFile: filepath.Join(dir, "run", "agent.pid")}
	install(t, bin, h.installed)
	h.agentProc = startAgentBinary(t, h.installed, append([]string{"SPROUT_PID_FILE=" + h.pidFile}, env...)...)
	h.bin = testenv.SproutBinary(t)
	return h
}

// install puts the file src at dst atomically (a rename), as a package
// manager does: the running agent's binary is replaced, not rewritten.
func install(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".new", b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		t.Fatal(err)
	}
}

// info is what the agent says of itself.
func (h *upgradeHost) info(t testing.TB) api.AgentInfo {
	t.Helper()
	info, err := api.NewClient(h.socket).Agent(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// upgrade installs bin, which reports version, and upgrades the agent to
// it: with `sprout agent upgrade`, or with SIGHUP (systemctl reload). It
// checks that a new process serves with that version and wrote its pid.
func (h *upgradeHost) upgrade(t testing.TB, bin, version string, hup bool) api.AgentInfo {
	t.Helper()
	before := h.info(t)
	install(t, bin, h.installed)
	if hup {
		syscall.Kill(before.PID, syscall.SIGHUP)
	} else {
		out := h.mustSprout("agent", "upgrade")
		if !strings.Contains(out, fmt.Sprintf("agent upgraded: sprout %s (pid ", version)) || !strings.Contains(out, fmt.Sprintf("was sprout %s (pid %d)", before.Version, before.PID)) {
			t.Fatalf("sprout agent upgrade:\n%s", out)
		}
	}
	var after api.AgentInfo
	testenv.Eventually(t, 30*time.Second, func() error {
		info, err := api.NewClient(h.socket).Agent(context.Background())
		if err != nil || info.PID == before.PID {
			return fmt.Errorf("the agent is still pid %d (%v)", before.PID, err)
		}
		after = info
		return nil
	})
	if after.Version != version || after.ID != before.ID {
		t.Fatalf("after the upgrade: %+v, want version %s and agent id %s", after, version, before.ID)
	}
	if b, err := os.ReadFile(h.pidFile); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(after.PID) {
		t.Errorf("pid file: %q, %v; want %d", b, err, after.PID)
	}
	return after
}

// connProbe opens a new connection to an app's port again and again,
// sends one request on each, and keeps the longest time from the dial to
// the answer's first line: how long a new connection waited.
type connProbe struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	n       int
	longest time.Duration
	failed  []string
}

// startConnProbe probes 127.0.0.1:port; with tc, over TLS (the shared
// HTTPS port), asking for tc.ServerName.
func startConnProbe(port int, tc *tls.Config) *connProbe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &connProbe{cancel: cancel, done: make(chan struct{})}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			took, err := probeOnce(addr, tc)
			p.mu.Lock()
			p.n++
			p.longest = max(p.longest, took)
			if err != nil && len(p.failed) < 10 {
				p.failed = append(p.failed, err.Error())
			}
			p.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return p
}

// probeOnce dials addr (with TLS when tc is set) and times a GET until
// its status line.
func probeOnce(addr string, tc *tls.Config) (time.Duration, error) {
	start := time.Now()
	d := &net.Dialer{Timeout: 5 * time.Second}
	var c net.Conn
	var err error
	host := "probe"
	if tc != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, tc)
		host = tc.ServerName
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return time.Since(start), err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host); err != nil {
		return time.Since(start), err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	if !strings.HasPrefix(line, "HTTP/1.1 200") {
		return took, fmt.Errorf("answered %q", strings.TrimSpace(line))
	}
	return took, nil
}

func (p *connProbe) stop() (n int, longest time.Duration, failed []string) {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.longest, p.failed
}

// TestUpgradeWithoutAGap upgrades the agent 10 times between two builds
// that report different versions (two of them by SIGHUP, as `systemctl
// reload` does), under continuous non-retrying load on two apps (one also
// by its domain on the shared HTTP port), new connections opened all the
// time on an app's port and on the shared HTTPS port, and a slow request
// in flight: no request fails, the slow one completes, and each time a
// new process serves the other version and writes its pid. Then: an
// upgrade to a binary that exits at start leaves the old agent serving
// and says why; an upgrade asked for during a deploy is refused with
// --no-wait and otherwise waits for it; and the port of an app removed
// after all these upgrades refuses connections.
func TestUpgradeWithoutAGap(t *testing.T) {
	bins := map[string]string{"e2e-a": testenv.SproutVersion(t, "e2e-a"), "e2e-b": testenv.SproutVersion(t, "e2e-b")}
	httpPort, httpsPort := testenv.FreePort(t), testenv.FreePort(t)
	h := startUpgradeHost(t, bins["e2e-a"], "SPROUT_DEPLOY_DRAIN_TIMEOUT=20s", "SPROUT_PROXY_ACCESS_LOG=false",
		fmt.Sprintf("SPROUT_PROXY_HTTP_PORT=%d", httpPort), fmt.Sprintf("SPROUT_PROXY_HTTPS_PORT=%d", httpsPort))
	ports, apps := map[string]int{}, map[string]string{}
	for _, name := range []string{"web", "api", "gone", "dom"} {
		apps[name], ports[name] = testenv.Name("up"+name), testenv.FreePort(t)
	}
	app := func(name string) string { return apps[name] }
	// dom is served by domain, on the shared ports, with a certificate of
	// our own.
	domain := app("dom") + ".example.com"
	ca := testenv.NewCA(t, "Upgrade Root")
	certPEM, keyPEM := ca.Issue(t, time.Now().Add(24*time.Hour), domain)
	certFile, keyFile := filepath.Join(t.TempDir(), "cert.pem"), filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(certFile, certPEM, 0o600)
	os.WriteFile(keyFile, keyPEM, 0o600)
	h.mustSprout("certs", "add", "--domain", domain, "--cert", certFile, "--key", keyFile)
	for _, name := range []string{"web", "api", "gone", "dom"} {
		args := []string{"deploy", testenv.Bundle(t, ""), "--app", apps[name], "--label", "v1", "--port", fmt.Sprint(ports[name]), "--health-path", "/healthz"}
		if name == "dom" {
			args = append(args, "--domain", domain, "--https-redirect=false")
		}
		h.mustSprout(args...)
	}

	loads := map[string]*loadgen.Load{}
	for _, name := range []string{"web", "api"} {
		loads[name] = loadgen.Start(loadgen.Options{URL: fmt.Sprintf("http://127.0.0.1:%d/", ports[name]), Workers: 3, Duration: 5 * time.Minute})
	}
	loads["dom by domain"] = loadgen.Start(loadgen.Options{URL: fmt.Sprintf("http://127.0.0.1:%d/", httpPort), Host: domain, Workers: 2, Duration: 5 * time.Minute})
	probe := startConnProbe(ports["api"], nil)
	tlsProbe := startConnProbe(httpsPort, &tls.Config{ServerName: domain, RootCAs: ca.Pool})
	// The slow request, on its own connection, in flight across the
	// upgrades: the agent that accepted it finishes it after it handed
	// over (deploy.drain_timeout is 20s).
	slow := make(chan string, 1)
	go func() {
		client := &http.Client{Transport: &http.Transport{}}
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/slow?ms=4000", ports["web"]))
		if err != nil {
			slow <- err.Error()
			return
		}
		defer resp.Body.Close()
		b := make([]byte, 64)
		n, _ := resp.Body.Read(b)
		slow <- fmt.Sprintf("%d %s", resp.StatusCode, b[:n])
	}()
	time.Sleep(300 * time.Millisecond)

	version := "e2e-a"
	start := time.Now()
	for i := range 10 {
		version = map[string]string{"e2e-a": "e2e-b", "e2e-b": "e2e-a"}[version]
		info := h.upgrade(t, bins[version], version, i == 3 || i == 7)
		if out := h.mustSprout("version"); !strings.Contains(out, fmt.Sprintf("agent:  sprout %s, pid %d, up ", version, info.PID)) {
			t.Errorf("sprout version after upgrade %d:\n%s", i+1, out)
		}
	}
	t.Logf("10 upgrades in %s", time.Since(start).Round(time.Millisecond))
	if got := <-slow; got != "200 v1 slow" {
		t.Errorf("the slow request in flight during the upgrades: %s", got)
	}
	if out := h.mustSprout("status", "--app", app("web")); !strings.Contains(out, "agent: sprout "+version+", pid ") {
		t.Errorf("status does not show the agent:\n%s", out)
	}

	// A binary that exits at start: the agent keeps serving, and says why.
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := h.info(t)
	install(t, broken, h.installed)
	_, stderr, code := h.sprout("agent", "upgrade")
	for _, want := range []string{"exited with status 3 before it was ready", fmt.Sprintf("this agent (sprout %s, pid %d) keeps serving", version, before.PID)} {
		if code == 0 || !strings.Contains(stderr, want) {
			t.Errorf("upgrade to a binary that exits: exit %d, stderr lacks %q:\n%s", code, want, stderr)
		}
	}
	if after := h.info(t); after.PID != before.PID || after.Version != before.Version {
		t.Errorf("after the failed upgrade the agent is %+v, want %+v", after, before)
	}
	// The successor writes to the agent's own stderr, a pipe this test
	// copies into h.log as it reads it: wait for the copy.
	testenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(h.log.String(), "broken build: cannot start") {
			return errors.New("the failed binary's output is not in the agent's log")
		}
		return nil
	})

	// An upgrade asked for during a deploy: refused with --no-wait,
	// otherwise it waits; the deploy (after the failed upgrade above:
	// operations run again) and the upgrade both succeed.
	deploy, lines := h.follow(t, "deploy", testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=2s"), "--app", app("api"), "--label", "v2")
	if err := lines.await("==> health", time.Minute); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = h.sprout("agent", "upgrade", "--no-wait")
	if code == 0 || !strings.Contains(stderr, "the deploy of "+app("api")+" v2 is in progress") || !strings.Contains(stderr, "--no-wait") {
		t.Errorf("upgrade --no-wait during a deploy: exit %d\n%s", code, stderr)
	}
	version = map[string]string{"e2e-a": "e2e-b", "e2e-b": "e2e-a"}[version]
	install(t, bins[version], h.installed)
	out := h.mustSprout("agent", "upgrade")
	if !strings.Contains(out, "waiting for the deploy of "+app("api")+" v2 to finish") || !strings.Contains(out, "agent upgraded: sprout "+version) {
		t.Errorf("upgrade during a deploy:\n%s", out)
	}
	if err := lines.await(app("api")+" v2 is serving", time.Minute); err != nil {
		t.Error(err)
	}
	if err := deploy.Wait(); err != nil {
		t.Errorf("the deploy the upgrade waited for: %v", err)
	}

	// The port of an app removed after the upgrades refuses connections
	// (no process keeps it bound with an accept queue nobody serves).
	h.mustSprout("apps", "rm", app("gone"))
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports["gone"]), 2*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("the removed app's port %d still takes connections", ports["gone"])
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the removed app's port %d: %v, want connection refused", ports["gone"], err)
	}

	for name, l := range loads {
		r := l.Stop()
		t.Logf("load on %s: %s", name, r)
		if r.Failed > 0 || r.OK < 100 {
			t.Errorf("load on %s through 11 upgrades and a deploy: %s", name, r)
		}
	}
	for name, p := range map[string]*connProbe{"api's port": probe, "the shared HTTPS port": tlsProbe} {
		n, longest, failed := p.stop()
		t.Logf("%d new connections to %s, the longest waited %s for its answer", n, name, longest.Round(100*time.Microsecond))
		if len(failed) > 0 || n < 50 {
			t.Errorf("%d new connections to %s, failed: %q", n, name, failed)
		}
	}
}

// BenchmarkUpgrade upgrades the agent b.N times between two builds while a
// probe opens new connections to an app one after the other, and reports
// the longest time a new connection waited for its answer during the
// upgrades (target: 50 ms at most), beside the longest over as long
// without an upgrade, and how many new connections failed (must be 0).
// Run it with -benchtime 10x (make bench).
func BenchmarkUpgrade(b *testing.B) {
	bins := map[string]string{"bench-a": testenv.SproutVersion(b, "bench-a"), "bench-b": testenv.SproutVersion(b, "bench-b")}
	h := startUpgradeHost(b, bins["bench-a"], "SPROUT_PROXY_ACCESS_LOG=false")
	port := testenv.FreePort(b)
	h.mustSprout("deploy", testenv.Bundle(b, ""), "--app", testenv.Name("bench"), "--label", "v1", "--port", fmt.Sprint(port), "--health-path", "/healthz")

	version := "bench-a"
	probe := startConnProbe(port, nil)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		version = map[string]string{"bench-a": "bench-b", "bench-b": "bench-a"}[version]
		h.upgrade(b, bins[version], version, false)
	}
	took := time.Since(start)
	b.StopTimer()
	n, longest, failed := probe.stop()

	// The same probe, as long, with no upgrade: what the host gives anyway.
	idle := startConnProbe(port, nil)
	time.Sleep(took)
	_, idleLongest, _ := idle.stop()

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(longest), "max-conn-wait-ms")
	b.ReportMetric(ms(idleLongest), "idle-max-conn-wait-ms")
	b.ReportMetric(float64(n), "new-conns")
	b.ReportMetric(float64(len(failed)), "failed-conns")
	if len(failed) > 0 {
		b.Errorf("new connections failed during the upgrades: %q", failed)
	}
}

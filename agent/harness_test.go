package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// Integration tests run side by side (t.Parallel): each has its own
// harness (agent, data dir, store), app names and ports, and touches only
// the engine objects its agent labels, as agents sharing an engine do.
//
// harness runs a real agent (real Docker engine, real proxy, real store)
// behind its API on a unix socket, the way `sprout agent` does.
type harness struct {
	t       *testing.T
	dataDir string
	docker  *runtime.Docker
	ag      *agent.Agent
	px      *proxy.Proxy
	st      *store.Store
	client  *api.Client
	stop    func()
	logs    *testenv.SyncBuffer
	flying  *inFlight
	// tune changes the agent's config; a harness with tune also runs the
	// health monitor, as `sprout agent` does.
	tune func(*agent.Config)
	// routes hears every route the agent installs, right after it takes
	// effect and before the agent goes on.
	routes routeHook
	// proxyOpts changes the proxy's options; certs, when set, is the
	// agent's certificate manager (and the proxy's Certificates).
	proxyOpts func(*proxy.Options)
	certs     agent.CertManager
}

// routeHook hands each route the agent installs to a test, in the
// agent's own goroutine, so that the test sees every step as it is.
type routeHook struct {
	mu sync.Mutex
	fn func(app string, backends []proxy.Backend)
}

func (r *routeHook) set(fn func(app string, backends []proxy.Backend)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fn = fn
}

// hookedRouter is the proxy, telling routes what it routes.
type hookedRouter struct {
	*proxy.Proxy
	hook *routeHook
}

func (r hookedRouter) Route(app string, backends []proxy.Backend, split map[string]int) (*proxy.Retired, error) {
	retired, err := r.Proxy.Route(app, backends, split)
	r.hook.mu.Lock()
	fn := r.hook.fn
	r.hook.mu.Unlock()
	if err == nil && fn != nil {
		fn(app, backends)
	}
	return retired, err
}

func testConfig(dataDir string) agent.Config {
	return agent.Config{
		DataDir:      dataDir,
		DrainTimeout: 5 * time.Second,
		StreamGrace:  time.Second,
		StopGrace:    2 * time.Second,
		Health:       health.Settings{Interval: 100 * time.Millisecond, Deadline: 20 * time.Second},
		// Dockerrun volume tests mount directories of the tests' own.
		HostDirs:    []string{"/var/app", os.TempDir()},
		HookTimeout: 3 * time.Second,
		BindAddress: "127.0.0.1",
	}
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessWith(t, nil)
}

// newHarnessWith is newHarness with tune applied to the agent's config,
// and the health monitor running.
func newHarnessWith(t *testing.T, tune func(*agent.Config)) *harness {
	t.Helper()
	return startHarness(t, &harness{tune: tune})
}

// startHarness starts h's agent, h's settings (tune, proxyOpts, certs)
// applied.
func startHarness(t *testing.T, h *harness) *harness {
	t.Helper()
	h.t, h.dataDir, h.docker, h.logs = t, t.TempDir(), testenv.Docker(t), &testenv.SyncBuffer{}
	testenv.CleanupAgent(t, func() string { return h.ag.ID() })
	h.start()
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", h.logs.String())
		}
	})
	return h
}

// start runs an agent on h.dataDir, as `sprout agent` does at boot.
func (h *harness) start() {
	t := h.t
	t.Helper()
	st, err := store.Open(filepath.Join(h.dataDir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(h.logs, nil))
	tracker := health.NewTracker() // the proxy feeds it, the agent reads it, as in `sprout agent`
	h.flying = &inFlight{n: map[string]int{}}
	opts := proxy.Options{BindAddress: "127.0.0.1", UpstreamTimeout: 30 * time.Second, Observer: proxy.Observers(tracker, h.flying)}
	if h.proxyOpts != nil {
		h.proxyOpts(&opts)
	}
	h.px = proxy.New(opts, log)
	cfg := testConfig(h.dataDir)
	if h.tune != nil {
		h.tune(&cfg)
	}
	h.ag, err = agent.New(cfg, h.docker, hookedRouter{h.px, &h.routes}, st, nil, tracker, log)
	if err != nil {
		t.Fatal(err)
	}
	if h.certs != nil {
		h.ag.SetCertManager(h.certs)
	}
	if err := h.ag.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.st = st
	watchCtx, stopWatch := context.WithCancel(context.Background())
	go h.ag.Watch(watchCtx)
	if h.tune != nil {
		go h.ag.Monitor(watchCtx)
	}
	sock := filepath.Join(h.dataDir, "sprout.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.NewServer(h.ag, "test", log)}
	go srv.Serve(ln)
	h.client = api.NewClient(sock)
	h.stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopWatch()
		srv.Shutdown(ctx)
		// Operations outlive their client: let them end, as a stopping
		// agent does, before the store closes.
		if err := h.ag.Wait(ctx); err != nil {
			t.Logf("stopping the agent: %v", err)
		}
		h.px.Shutdown(ctx)
		st.Close()
	}
}

// restart stops the agent (its containers keep running) and starts a new
// one on the same data dir.
func (h *harness) restart() {
	h.stop()
	h.start()
}

// deploy packs dir and deploys it, returning the streamed lines too.
func (h *harness) deploy(app, label, dir string, params map[string]string) (*api.Message, []string, error) {
	h.t.Helper()
	return h.deployWatching(app, label, dir, params, nil)
}

// deployWatching is deploy that also hands each message to watch.
func (h *harness) deployWatching(app, label, dir string, params map[string]string, watch func(api.Message)) (*api.Message, []string, error) {
	h.t.Helper()
	return h.deployCtx(context.Background(), app, label, dir, params, watch)
}

// deployCtx is deployWatching whose client goes away when ctx ends.
func (h *harness) deployCtx(ctx context.Context, app, label, dir string, params map[string]string, watch func(api.Message)) (*api.Message, []string, error) {
	h.t.Helper()
	packedMu.Lock()
	packed, ok := packedBundles[dir]
	if !ok {
		var buf bytes.Buffer
		if err := bundle.Pack(dir, &buf); err != nil {
			h.t.Fatal(err)
		}
		packed = buf.Bytes()
		packedBundles[dir] = packed
	}
	packedMu.Unlock()
	buf := bytes.NewReader(packed)
	q := url.Values{"label": {label}, "source": {"test"}}
	for k, v := range params {
		q.Set(k, v)
	}
	var lines []string
	var mu sync.Mutex
	last, err := h.client.Deploy(ctx, app, q, buf, func(m api.Message) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, m.Step+": "+m.Line)
		if watch != nil {
			watch(m)
		}
	})
	return last, lines, err
}

// packedBundles caches bundle archives by directory: packing is the
// CLI's work, and repeating it would only slow the tests.
var (
	packedMu      sync.Mutex
	packedBundles = map[string][]byte{}
)

// mustDeploy deploys and fails the test on error.
func (h *harness) mustDeploy(app, label, dir string, params map[string]string) *api.Message {
	h.t.Helper()
	last, lines, err := h.deploy(app, label, dir, params)
	if err != nil {
		h.t.Fatalf("deploy %s %s: %v\n%s", app, label, err, strings.Join(lines, "\n"))
	}
	return last
}

// get fetches path from the app's public port.
func get(t *testing.T, port int, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func portParam(port int) map[string]string {
	return map[string]string{"port": fmt.Sprint(port)}
}

// inFlight counts the requests the proxy is serving, by app, so that a
// test can wait until its request is under way.
type inFlight struct {
	mu sync.Mutex
	n  map[string]int
}

func (f *inFlight) App(app string) proxy.AppObserver { return inFlightApp{f, app} }

func (f *inFlight) add(app string, d int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n[app] += d
}

// count says how many of app's requests are in flight.
func (f *inFlight) count(app string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n[app]
}

type inFlightApp struct {
	f   *inFlight
	app string
}

func (o inFlightApp) Start()                                         { o.f.add(o.app, 1) }
func (o inFlightApp) Done(string, string, int, time.Duration, int64) { o.f.add(o.app, -1) }
func (inFlightApp) UpstreamError(string, string)                     {}

var _ proxy.Observer = (*inFlight)(nil)

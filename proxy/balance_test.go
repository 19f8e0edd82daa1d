package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// route installs backends and split for "web", failing the test on an
// error.
func route(t *testing.T, p *Proxy, backends []Backend, split map[string]int) *Retired {
	t.Helper()
	r, err := p.Route("web", backends, split)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// countBodies sends n GETs to url, one after the other, and counts the
// answers by body; any other status fails the test.
func countBodies(t *testing.T, url string, n int) map[string]int {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	got := map[string]int{}
	for range n {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("got %d %q", resp.StatusCode, b)
		}
		got[string(b)]++
	}
	return got
}

// TestSplitFollowsShares: with a 90/10 split, 2000 requests land within 2
// points of 10% on the canary, and each request is reported with the
// version that served it.
func TestSplitFollowsShares(t *testing.T) {
	obs := &countingObserver{}
	p, url := startProxy(t, Options{Observer: obs}, nil)
	route(t, p, []Backend{
		{addrOf(backend(t, "v1", nil)), "v1"},
		{addrOf(backend(t, "v1", nil)), "v1"},
		{addrOf(backend(t, "v2", nil)), "v2"},
	}, map[string]int{"v1": 90, "v2": 10})
	const n = 2000
	got := countBodies(t, url, n)
	share := float64(got["v2"]) / n * 100
	t.Logf("v1 %d, v2 %d: v2 has %.1f%%", got["v1"], got["v2"], share)
	if share < 8 || share > 12 {
		t.Errorf("v2 got %.1f%% of requests, want 10 ± 2", share)
	}
	waitFor(t, func() bool { return obs.count("done") == n }, "every request reported")
	for _, v := range []string{"v1", "v2"} {
		if obs.count("done "+v) != got[v] {
			t.Errorf("reported %d requests of %s, it served %d", obs.count("done "+v), v, got[v])
		}
	}

	// Then all of it to v2, the same targets kept.
	route(t, p, p.Backends("web"), map[string]int{"v2": 100})
	if got := countBodies(t, url, 50); got["v2"] != 50 {
		t.Errorf("with v2 at 100%%: %v", got)
	}
}

// TestRouteRefusesBadSplits: a split that cannot be followed is an error,
// and the app keeps its routes.
func TestRouteRefusesBadSplits(t *testing.T) {
	p, _ := startProxy(t, Options{}, nil)
	a, b := addrOf(backend(t, "a", nil)), addrOf(backend(t, "b", nil))
	good := []Backend{{a, "v1"}, {b, "v2"}}
	route(t, p, good, nil)
	for _, c := range []struct {
		name     string
		backends []Backend
		split    map[string]int
		says     string
	}{
		{"shares under 100", good, map[string]int{"v1": 80, "v2": 10}, "add up to 90%"},
		{"shares over 100", good, map[string]int{"v1": 100, "v2": 10}, "add up to 110%"},
		{"negative share", good, map[string]int{"v1": 110, "v2": -10}, "0 to 100"},
		{"version without backends", good, map[string]int{"v1": 90, "v3": 10}, `"v3" has a share of the traffic but no backend`},
		{"empty split", good, map[string]int{}, "add up to 0%"},
		{"address twice", []Backend{{a, "v1"}, {a, "v2"}}, nil, "listed twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := p.Route("web", c.backends, c.split)
			if !errors.Is(err, ErrBadRoute) || !strings.Contains(err.Error(), c.says) {
				t.Errorf("err = %v, want ErrBadRoute saying %q", err, c.says)
			}
			if got := p.Backends("web"); len(got) != 2 || got[0] != good[0] || got[1] != good[1] {
				t.Errorf("backends after a refused route = %v, want %v", got, good)
			}
		})
	}
}

// TestBalancingIsFair: four alike backends under concurrent load each get
// a fair share.
func TestBalancingIsFair(t *testing.T) {
	p, url := startProxy(t, Options{}, nil)
	var backends []Backend
	for i := range 4 {
		backends = append(backends, Backend{addrOf(backend(t, fmt.Sprint(i), nil)), "v1"})
	}
	route(t, p, backends, nil)
	got := sendConcurrently(t, url, 8, 4000)
	for i := range 4 {
		if n := got[fmt.Sprint(i)]; n < 700 || n > 1300 {
			t.Errorf("backend %d got %d of 4000 requests, want about 1000 (all: %v)", i, n, got)
		}
	}
}

// TestBalancingAvoidsASlowBackend: of four backends, one takes 20 ms per
// request; least outstanding requests sends it fewer than its quarter,
// where round robin would send it as many as the others.
func TestBalancingAvoidsASlowBackend(t *testing.T) {
	p, url := startProxy(t, Options{}, nil)
	backends := []Backend{{addrOf(backend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // what makes it slow, not a wait of the test
		fmt.Fprint(w, "slow")
	})), "v1"}}
	for i := range 3 {
		backends = append(backends, Backend{addrOf(backend(t, fmt.Sprint(i), nil)), "v1"})
	}
	route(t, p, backends, nil)
	got := sendConcurrently(t, url, 16, 2000)
	t.Logf("answers: %v", got)
	if share := float64(got["slow"]) / 2000; share > 0.15 {
		t.Errorf("the slow backend got %.0f%% of requests, want well under 25%%", share*100)
	}
}

// sendConcurrently sends n GETs from workers goroutines and counts the
// answers by body; any failure fails the test.
func sendConcurrently(t *testing.T, url string, workers, n int) map[string]int {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var mu sync.Mutex
	got := map[string]int{}
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				resp, err := client.Get(url)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				got[string(b)]++
				if resp.StatusCode != 200 {
					got[fmt.Sprint(resp.StatusCode)]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return got
}

// logLines counts the lines of a JSON log whose msg is msg.
func logLines(log *testenv.SyncBuffer, msg string) int {
	n := 0
	for _, l := range strings.Split(log.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			n++
		}
	}
	return n
}

// TestRefusingBackendIsEjected: with one of three backends refusing
// connections, a non-retrying client sees no failure (the requests it
// refused go to another), the backend leaves the rotation, and it returns
// once it listens again. Each change is logged once.
func TestRefusingBackendIsEjected(t *testing.T) {
	var log testenv.SyncBuffer
	p, url := startProxy(t, Options{}, &log)
	dead := backend(t, "dead", nil)
	deadAddr := addrOf(dead)
	dead.Close()
	route(t, p, []Backend{
		{addrOf(backend(t, "a", nil)), "v1"},
		{deadAddr, "v1"},
		{addrOf(backend(t, "b", nil)), "v1"},
	}, nil)
	load := loadgen.Start(loadgen.Options{URL: url, Workers: 8})
	t.Cleanup(func() { load.Stop() })
	testenv.Answered(t, load, "a", 300)
	if n := logLines(&log, "target ejected"); n != 1 {
		t.Errorf("%d lines say the dead backend was ejected, want 1", n)
	}
	r := p.routesOf("web")
	if m, _ := r.find(deadAddr); m.t.inRotation() {
		t.Error("the dead backend is still in the rotation")
	}

	// It comes back on the same address, and takes requests again after
	// a trial.
	ln, err := net.Listen("tcp", deadAddr)
	if err != nil {
		t.Skipf("the dead backend's port was taken meanwhile: %v", err)
	}
	back := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, "back")
	}))
	back.Listener.Close()
	back.Listener = ln
	back.Start()
	t.Cleanup(back.Close)
	testenv.Answered(t, load, "back", 100)
	res := load.Stop()
	t.Logf("%s; answers %v", res, res.Bodies)
	if res.Failed != 0 {
		t.Errorf("the client saw failures: %s", res)
	}
	if n := logLines(&log, "target back in rotation"); n != 1 {
		t.Errorf("%d lines say the backend came back, want 1", n)
	}
	if share := float64(res.Bodies["back"]) / float64(res.OK); res.Bodies["back"] == 0 || share > 0.5 {
		t.Errorf("the returned backend served %d of %d requests", res.Bodies["back"], res.OK)
	}
}

// TestLastTargetIsNeverEjected: an app whose only backend refuses
// connections gets 502s, and the backend stays in the rotation, so that
// the first request after it listens again goes to it.
func TestLastTargetIsNeverEjected(t *testing.T) {
	p, url := startProxy(t, Options{}, nil)
	dead := backend(t, "dead", nil)
	dead.Close()
	route(t, p, []Backend{{addrOf(dead), "v1"}}, nil)
	for range 3 {
		if code, _, _ := get(t, url, nil); code != http.StatusBadGateway {
			t.Fatalf("got %d, want 502", code)
		}
	}
	if m, _ := p.routesOf("web").find(addrOf(dead)); !m.t.inRotation() {
		t.Error("the app's last target was ejected")
	}
}

// TestRetryRule: a request that could not be sent to one target goes to
// another, body and all; one that reached an app is never sent again.
func TestRetryRule(t *testing.T) {
	var other atomic.Int64
	good := backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		other.Add(1)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "good %s", b)
	})
	dead := backend(t, "dead", nil)
	dead.Close()
	hangUp := backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		// It read the request and dies without an answer.
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	// The split sends every new request to version "first" while it has
	// a target that takes requests.
	split := map[string]int{"first": 100, "other": 0}

	t.Run("refused goes elsewhere", func(t *testing.T) {
		p, url := startProxy(t, Options{}, nil)
		route(t, p, []Backend{{addrOf(dead), "first"}, {addrOf(good), "other"}}, split)
		resp, err := http.Post(url, "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "good payload" {
			t.Errorf("got %d %q, want the other backend's answer with the body", resp.StatusCode, b)
		}
	})
	t.Run("what reached the app is not sent again", func(t *testing.T) {
		obs := &countingObserver{}
		p, url := startProxy(t, Options{Observer: obs}, nil)
		route(t, p, []Backend{{addrOf(hangUp), "first"}, {addrOf(good), "other"}}, split)
		before := other.Load()
		for _, body := range []io.Reader{nil, strings.NewReader("payload")} {
			resp, err := http.Post(url, "text/plain", body)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("got %d, want 502", resp.StatusCode)
			}
		}
		if n := other.Load() - before; n != 0 {
			t.Errorf("the other backend got %d requests that had reached the first", n)
		}
		waitFor(t, func() bool { return obs.count("unreachable first") == 2 }, "two unreachable errors of version first")
	})
}

// TestSetHealthy: a target the health checks mark down takes no new
// requests until it is marked up; with every target down, requests are
// still tried. Each change is logged once.
func TestSetHealthy(t *testing.T) {
	var log testenv.SyncBuffer
	p, url := startProxy(t, Options{}, &log)
	a, b := addrOf(backend(t, "a", nil)), addrOf(backend(t, "b", nil))
	route(t, p, []Backend{{a, "v1"}, {b, "v1"}}, nil)

	p.SetHealthy("web", a, false)
	p.SetHealthy("web", a, false)
	if got := countBodies(t, url, 50); got["b"] != 50 {
		t.Errorf("with a down: %v, want all on b", got)
	}
	if in := p.InRotation("web"); !slices.Equal(in, []string{b}) {
		t.Errorf("in the rotation with a down: %v, want %s", in, b)
	}
	p.SetHealthy("web", b, false)
	if got := countBodies(t, url, 20); got["a"]+got["b"] != 20 {
		t.Errorf("with both down: %v, want every request answered", got)
	}
	p.SetHealthy("web", a, true)
	p.SetHealthy("web", b, true)
	if in := p.InRotation("web"); len(in) != 2 {
		t.Errorf("in the rotation with both up: %v", in)
	}
	if got := countBodies(t, url, 200); got["a"] < 50 || got["b"] < 50 {
		t.Errorf("with both up again: %v", got)
	}
	if n, m := logLines(&log, "target marked unhealthy"), logLines(&log, "target marked healthy"); n != 2 || m != 2 {
		t.Errorf("%d lines say unhealthy and %d healthy, want 2 and 2", n, m)
	}
	p.SetHealthy("web", "10.0.0.1:1", false) // not a target: ignored
	p.SetHealthy("nope", a, false)
}

// TestVersionsAreReported: the observer hears each request with the
// version that served it, and errors with the version that failed them
// ("" when no target was chosen).
func TestVersionsAreReported(t *testing.T) {
	obs := &countingObserver{}
	p, url := startProxy(t, Options{Observer: obs, StartWait: -1, UpstreamTimeout: 100 * time.Millisecond}, nil)
	get(t, url, nil)
	slow := backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	route(t, p, []Backend{{addrOf(backend(t, "v1", nil)), "v1"}, {addrOf(slow), "v2"}}, map[string]int{"v1": 50, "v2": 50})
	got := countStatuses(t, url, 10)
	waitFor(t, func() bool { return obs.count("done") == 10 }, "10 requests reported")
	for k, want := range map[string]int{"no_target ": 1, "done v1": got[200], "timeout v2": got[504], "done v2": got[504]} {
		if n := obs.count(k); n != want {
			t.Errorf("%q counted %d times, want %d", k, n, want)
		}
	}
	if got[200] != 5 || got[504] != 5 {
		t.Errorf("statuses %v, want 5 of each", got)
	}
}

// countStatuses sends n GETs, one after the other, and counts their
// statuses.
func countStatuses(t *testing.T, url string, n int) map[int]int {
	t.Helper()
	got := map[int]int{}
	for range n {
		code, _, _ := get(t, url, nil)
		got[code]++
	}
	return got
}

// TestCanaryUnderLoad moves traffic from v1 to v2 through a 10% split,
// then all of it, while a non-retrying client sends POSTs: nothing fails,
// and the split holds while it lasts.
func TestCanaryUnderLoad(t *testing.T) {
	p, url := startProxy(t, Options{}, nil)
	var servers []*httptest.Server
	mk := func(version string) Backend {
		srv := backend(t, version, nil)
		servers = append(servers, srv)
		return Backend{addrOf(srv), version}
	}
	v1 := []Backend{mk("v1"), mk("v1")}
	v2 := []Backend{mk("v2"), mk("v2")}
	route(t, p, v1, nil)
	load := loadgen.Start(loadgen.Options{URL: url, Workers: 16})
	t.Cleanup(func() { load.Stop() })
	testenv.Answered(t, load, "v1", 200)

	before := load.Now()
	route(t, p, append(append([]Backend{}, v1...), v2...), map[string]int{"v1": 90, "v2": 10})
	testenv.Answered(t, load, "v2", 200)
	during := load.Now()

	retired := route(t, p, v2, nil)
	st := retired.Drain(t.Context(), 5*time.Second, time.Second)
	for _, srv := range servers[:2] {
		srv.Close() // v1's containers stop
	}
	testenv.Answered(t, load, "v2", 500)
	res := load.Stop()
	t.Logf("%s; drain %+v", res, st)
	if res.Failed != 0 || st.Cut != 0 {
		t.Errorf("failures: %s; drain %+v", res, st)
	}
	d1, d2 := during.Bodies["v1"]-before.Bodies["v1"], during.Bodies["v2"]-before.Bodies["v2"]
	if share := float64(d2) / float64(d1+d2) * 100; share < 8 || share > 12 {
		t.Errorf("during the split v2 had %.1f%% of %d requests, want 10 ± 2", share, d1+d2)
	}
	if got := p.Backends("web"); len(got) != 2 || got[0] != v2[0] || got[1] != v2[1] {
		t.Errorf("backends = %v, want v2's", got)
	}
}

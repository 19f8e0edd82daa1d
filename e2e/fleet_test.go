package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/store"
)

// fleetHost is one agent of an environment, with its own host id, data
// dir, socket, metrics address and loopback address.
type fleetHost struct {
	*agentProc
	id, addr string
	load     *loadgen.Load
}

// startFleetHost starts agent n of the environment env, as host id, on
// the loopback address 127.0.1.n.
func startFleetHost(t testing.TB, fake *testenv.FakeS3, env, hostDirs, id string, n int) *fleetHost {
	addr := fmt.Sprintf("127.0.1.%d", n)
	a := startAgent(t, "SPROUT_S3_ENDPOINT="+fake.URL, "SPROUT_S3_PATH_STYLE=true",
		"SPROUT_ENVIRONMENT="+env, "SPROUT_HOST_ID="+id, "SPROUT_PROXY_BIND_ADDRESS="+addr,
		"SPROUT_VOLUMES_HOST_DIRS="+hostDirs, "SPROUT_PROXY_ACCESS_LOG=false")
	return &fleetHost{agentProc: a, id: id, addr: addr}
}

// body fetches / from the host's public port.
func (h *fleetHost) body(t testing.TB, port int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/", h.addr, port))
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// events lists the host's events of app.
func (h *fleetHost) events(t testing.TB, app string) []store.Event {
	t.Helper()
	evs, err := api.NewClient(h.socket).Events(context.Background(), app, 500)
	if err != nil {
		t.Fatalf("%s: events: %v", h.id, err)
	}
	return evs
}

// firstEvent is when host's first event of app matching re happened.
func (h *fleetHost) firstEvent(t testing.TB, app string, re *regexp.Regexp) time.Time {
	t.Helper()
	var at time.Time
	for _, e := range h.events(t, app) {
		if re.MatchString(e.Message) && (at.IsZero() || e.Time.Before(at)) {
			at = e.Time
		}
	}
	return at
}

// serving waits until every host answers with body.
func serving(t testing.TB, hosts []*fleetHost, port int, body string) {
	t.Helper()
	testenv.Eventually(t, time.Minute, func() error {
		for _, h := range hosts {
			if got := h.body(t, port); got != body {
				return fmt.Errorf("%s answers %q, want %q", h.id, got, body)
			}
		}
		return nil
	})
}

// TestFleet runs an environment of five agents on this machine, each with
// its own host id, data dir, socket, metrics address and loopback address
// (127.0.1.1 to 127.0.1.5, one public port), sharing a loopback S3 and
// continuous non-retrying load on every host: rollouts go in batches of
// hosts, a version that fails on later hosts is rolled back everywhere,
// Immutable switches no host before all are ready, a killed agent is left
// out, a late joiner converges, and of two concurrent deploys one wins.
func TestFleet(t *testing.T) {
	fake := testenv.S3(t, "fleet")
	env := "s3://fleet/envs/prod/"
	marks := t.TempDir()
	var hosts []*fleetHost
	for n := 1; n <= 5; n++ {
		hosts = append(hosts, startFleetHost(t, fake, env, marks, fmt.Sprintf("host-%d", n), n))
	}
	cli := hosts[0]
	app, port := testenv.Name("fleet"), testenv.FreePort(t)
	bundle := testenv.Bundle(t, "")
	deploy := func(t *testing.T, label, dir string, args ...string) (string, int) {
		t.Helper()
		out, errOut, code := cli.sprout(append([]string{"deploy", dir, "--env", env, "--app", app, "--label", label, "--stable-for", "1s"}, args...)...)
		t.Logf("deploy %s (exit %d):\n%s%s", label, code, out, errOut)
		return out + errOut, code
	}

	// v1 everywhere: the environment's first version.
	if out, code := deploy(t, "v1", bundle, "--port", fmt.Sprint(port), "--health-path", "/healthz"); code != 0 {
		t.Fatalf("v1: exit %d\n%s", code, out)
	}
	serving(t, hosts, port, "v1 ")
	for _, h := range hosts {
		h.load = loadgen.Start(loadgen.Options{URL: fmt.Sprintf("http://%s:%d/", h.addr, port), Workers: 2})
	}
	checkLoad := func(t *testing.T, what string) {
		t.Helper()
		for _, h := range hosts {
			if h.load == nil {
				continue
			}
			if r := h.load.Now(); r.Failed != 0 {
				t.Errorf("%s: %d requests to %s failed: %s", what, r.Failed, h.id, r)
			}
		}
	}

	t.Run("Rolling in batches of 2 hosts", func(t *testing.T) {
		out, code := deploy(t, "v2", bundle, "--policy", "Rolling", "--batch-size", "2", "--batch-size-type", "Fixed")
		if code != 0 {
			t.Fatalf("v2: exit %d\n%s", code, out)
		}
		for _, want := range []string{"batch 1 of 3", "batch 2 of 3", "batch 3 of 3", "serves on every host"} {
			if !strings.Contains(out, want) {
				t.Errorf("the deploy's output lacks %q", want)
			}
		}
		serving(t, hosts, port, "v2 ")
		checkLoad(t, "v2")
		// Batches in order: a batch's hosts start after every host of
		// the batch before serves v2.
		started := regexp.MustCompile(`^deploy of v2 started`)
		done := regexp.MustCompile(`^v2 is serving`)
		for b := 1; b < 3; b++ {
			var lastDone time.Time
			for _, h := range hosts[(b-1)*2 : b*2] {
				if at := h.firstEvent(t, app, done); at.After(lastDone) {
					lastDone = at
				}
			}
			for _, h := range hosts[b*2 : min(b*2+2, len(hosts))] {
				if at := h.firstEvent(t, app, started); at.Before(lastDone) {
					t.Errorf("%s (batch %d) started v2 at %s, before batch %d was done at %s", h.id, b+1, at.Format("15:04:05.000"), b, lastDone.Format("15:04:05.000"))
				}
			}
		}
	})

	t.Run("a version that fails in batch 2 is rolled back everywhere", func(t *testing.T) {
		bad := testenv.WriteFiles(t, testenv.Bundle(t, "", "ENV APP_HEALTHY_ONLY_FIRST=/mark/ok APP_HEALTHY_FIRST_N=2"),
			map[string]string{"Dockerrun.aws.json": fmt.Sprintf(`{"AWSEBDockerrunVersion": "1", "Volumes": [{"HostDirectory": %q, "ContainerDirectory": "/mark"}]}`, marks)})
		out, code := deploy(t, "v3", bad, "--policy", "Rolling", "--batch-size", "2", "--batch-size-type", "Fixed", "--health-deadline", "3s")
		if code != 1 {
			t.Fatalf("v3: exit %d, want 1\n%s", code, out)
		}
		for _, want := range []string{"rolled-back", "the hosts serve v2"} {
			if !strings.Contains(out, want) {
				t.Errorf("the deploy's output lacks %q", want)
			}
		}
		if !regexp.MustCompile(`\(host host-[34]\)`).MatchString(out) {
			t.Errorf("the deploy's output does not name host-3 or host-4 of batch 2 as the one that failed")
		}
		serving(t, hosts, port, "v2 ")
		checkLoad(t, "v3")
		for _, h := range hosts[4:] {
			if at := h.firstEvent(t, app, regexp.MustCompile(`^deploy of v3 started`)); !at.IsZero() {
				t.Errorf("%s of batch 3 started v3", h.id)
			}
		}
	})

	t.Run("Immutable switches no host before all are ready", func(t *testing.T) {
		var first sync.Map // host id → first time it answered v4
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, h := range hosts {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if h.body(t, port) == "v4 " {
						first.LoadOrStore(h.id, time.Now())
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
		out, code := deploy(t, "v4", bundle, "--policy", "Immutable")
		close(stop)
		wg.Wait()
		if code != 0 {
			t.Fatalf("v4: exit %d\n%s", code, out)
		}
		serving(t, hosts, port, "v4 ")
		checkLoad(t, "v4")
		var lastReady time.Time
		for _, h := range hosts {
			at := h.firstEvent(t, app, regexp.MustCompile(`^v4 is ready beside the serving version`))
			if at.IsZero() {
				t.Errorf("%s never said v4 was ready beside v2", h.id)
			}
			if at.After(lastReady) {
				lastReady = at
			}
		}
		first.Range(func(k, v any) bool {
			if at := v.(time.Time); at.Before(lastReady) {
				t.Errorf("%s answered v4 at %s, before every host was ready (%s)", k, at.Format("15:04:05.000"), lastReady.Format("15:04:05.000"))
			}
			return true
		})
	})

	t.Run("TrafficSplitting: a bad canary host is rolled back, a good one promoted", func(t *testing.T) {
		// The bad canary answers 500 to half of its requests: the load
		// sees those, so it starts afresh afterwards.
		for _, h := range hosts {
			if r := h.load.Stop(); r.Failed != 0 {
				t.Errorf("before the canary, %d requests to %s failed: %s", r.Failed, h.id, r)
			}
			h.load = loadgen.Start(loadgen.Options{URL: fmt.Sprintf("http://%s:%d/", h.addr, port), Workers: 2})
		}
		canary := []string{"--policy", "TrafficSplitting", "--canary-percent", "20", "--evaluation-time", "6s"}
		out, code := deploy(t, "v4bad", testenv.Bundle(t, "", "ENV APP_FAIL_EVERY=2"), canary...)
		if code != 1 {
			t.Fatalf("bad canary: exit %d, want 1\n%s", code, out)
		}
		for _, want := range []string{"evaluating", "canary: ", "clearly worse", "(host host-1)", "the hosts serve v4"} {
			if !strings.Contains(out, want) {
				t.Errorf("the bad canary's output lacks %q", want)
			}
		}
		serving(t, hosts, port, "v4 ")
		for _, h := range hosts {
			if at := h.firstEvent(t, app, regexp.MustCompile(`^deploy of v4bad started`)); !at.IsZero() && h.id != "host-1" {
				t.Errorf("%s, not the canary, started v4bad", h.id)
			}
			r := h.load.Stop()
			if h.id != "host-1" && r.Failed != 0 {
				t.Errorf("%d requests to %s failed: %s", r.Failed, h.id, r)
			}
			h.load = loadgen.Start(loadgen.Options{URL: fmt.Sprintf("http://%s:%d/", h.addr, port), Workers: 2})
		}
		out, code = deploy(t, "v4good", bundle, canary...)
		if code != 0 {
			t.Fatalf("good canary: exit %d\n%s", code, out)
		}
		if !strings.Contains(out, "canary: ") {
			t.Errorf("the good canary's output does not show the verdict")
		}
		serving(t, hosts, port, "v4good ")
		checkLoad(t, "v4good")
	})

	t.Run("a killed agent is lost and the rollout finishes on the others", func(t *testing.T) {
		victim := hosts[4]
		victim.load.Stop()
		victim.load = nil
		done := make(chan struct{})
		var out string
		var code int
		go func() {
			defer close(done)
			out, code = deploy(t, "v5", bundle, "--policy", "Rolling", "--batch-size", "2", "--batch-size-type", "Fixed", "--lost-after", "10s")
		}()
		// Kill it while the first batch moves.
		testenv.Eventually(t, time.Minute, func() error {
			if hosts[0].body(t, port) != "v5 " && hosts[1].body(t, port) != "v5 " {
				return fmt.Errorf("batch 1 not moving yet")
			}
			return nil
		})
		victim.kill(syscall.SIGKILL)
		<-done
		if code != 0 {
			t.Fatalf("v5: exit %d\n%s", code, out)
		}
		serving(t, hosts[:4], port, "v5 ")
		checkLoad(t, "v5")
		status := cli.mustSprout("status", "--env", env)
		if !regexp.MustCompile(`host-5 .*lost`).MatchString(status) {
			t.Errorf("status does not show host-5 lost:\n%s", status)
		}
		hosts = hosts[:4]
	})

	top := t
	t.Run("a late joiner serves the last good version", func(t *testing.T) {
		late := startFleetHost(top, fake, env, marks, "host-6", 6) // it stays for what follows
		serving(t, []*fleetHost{late}, port, "v5 ")
		hosts = append(hosts, late)
	})

	t.Run("of two concurrent deploys one wins", func(t *testing.T) {
		var wg sync.WaitGroup
		outs := make([]string, 2)
		codes := make([]int, 2)
		for i, label := range []string{"v6", "v7"} {
			wg.Go(func() { outs[i], codes[i] = deploy(t, label, bundle, "--lost-after", "10s") })
		}
		wg.Wait()
		var won []string
		for i, label := range []string{"v6", "v7"} {
			if codes[i] == 0 {
				won = append(won, label)
			} else if !strings.Contains(outs[i], "is in flight") {
				t.Errorf("the losing deploy does not say who holds the environment:\n%s", outs[i])
			}
		}
		if len(won) != 1 {
			t.Fatalf("%d deploys won (%v), want 1", len(won), won)
		}
		serving(t, hosts, port, won[0]+" ")
		checkLoad(t, "v6 and v7")
	})
	t.Run("an interrupted CLI leaves the rollout running; rollback --env", func(t *testing.T) {
		cmd := exec.Command(cli.bin, "deploy", bundle, "--env", env, "--app", app, "--label", "v8", "--stable-for", "1s", "--lost-after", "10s")
		cmd.Env = cli.env
		pr, pw := io.Pipe()
		cmd.Stdout = pw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, pr, "published rollout")
		go io.Copy(io.Discard, pr)
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		pw.Close()
		serving(t, hosts, port, "v8 ")
		testenv.Eventually(t, time.Minute, func() error {
			if status, _, _ := cli.sprout("status", "--env", env); !strings.Contains(status, "v8: succeeded") {
				return fmt.Errorf("the interrupted deploy did not finish:\n%s", status)
			}
			return nil
		})

		// Back to the good version before v8, on every host.
		out, errOut, code := cli.sprout("rollback", "--env", env, "--app", app)
		if code != 0 {
			t.Fatalf("rollback --env: exit %d\n%s%s", code, out, errOut)
		}
		if !regexp.MustCompile(`rolling \S+ back to v[67] on every host`).MatchString(out) {
			t.Errorf("rollback --env:\n%s", out)
		}
		label := regexp.MustCompile(`back to (v[67])`).FindStringSubmatch(out)
		if label != nil {
			serving(t, hosts, port, label[1]+" ")
		}
		checkLoad(t, "v8 and the rollback")
	})
	for _, h := range hosts {
		if h.load != nil {
			if r := h.load.Stop(); r.Failed != 0 {
				t.Errorf("%s: %s", h.id, r)
			}
		}
	}
}

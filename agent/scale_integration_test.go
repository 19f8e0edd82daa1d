package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/store"
)

// scale scales app to n through the API, returning the streamed lines.
func (h *harness) scale(app string, n int) ([]string, error) {
	h.t.Helper()
	var lines []string
	_, err := h.client.Scale(context.Background(), app, api.ScaleRequest{Instances: n}, func(m api.Message) {
		lines = append(lines, m.Step+": "+m.Line)
	})
	return lines, err
}

// routedToInstances checks that the proxy sends app's traffic to exactly
// the addresses of its instances.
func routedToInstances(t *testing.T, h *harness, app string) {
	t.Helper()
	a, err := h.ag.App(app)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, in := range h.ag.Instances(context.Background(), a) {
		addrs = append(addrs, in.Addr)
	}
	targets := h.px.Targets(app)
	slices.Sort(addrs)
	slices.Sort(targets)
	if !slices.Equal(addrs, targets) {
		t.Errorf("the proxy routes %s to %v, its instances are at %v", app, targets, addrs)
	}
}

// stopLoad stops load, logs what it saw during what, and fails the test
// if any request failed.
func stopLoad(t *testing.T, load *loadgen.Load, during string) loadgen.Result {
	t.Helper()
	r := load.Stop()
	t.Logf("load during %s: %s", during, r)
	if r.Failed != 0 {
		t.Errorf("%d requests failed during %s: %s", r.Failed, during, r)
	}
	return r
}

// sameContainers checks that after lists the containers of before, in
// any order.
func sameContainers(t *testing.T, before, after []string) {
	t.Helper()
	before, after = slices.Sorted(slices.Values(before)), slices.Sorted(slices.Values(after))
	if !slices.Equal(before, after) {
		t.Errorf("instances = %v, want the same containers as before, %v", after, before)
	}
}

// hasEvent checks that app's events include one that contains want.
func hasEvent(t *testing.T, h *harness, app, want string) {
	t.Helper()
	evs, err := h.client.Events(context.Background(), app, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if strings.Contains(e.Message, want) {
			return
		}
	}
	t.Errorf("no event of %s says %q: %+v", app, want, evs)
}

// TestScaleUnderLoad scales an app from 2 to 4 instances and down to 1
// while a client that never retries sends requests: none fails, each
// scale runs its plan, the count is kept, the proxy routes to exactly the
// instances, the instances that go are drained before they stop, and no
// hook runs.
func TestScaleUnderLoad(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("scale"), testenv.FreePort(t)
	mark := t.TempDir()
	h.mustDeploy(app, "v1", hookBundle(t, mark, nil), map[string]string{"port": fmt.Sprint(port), "instances": "2", "health_path": "/healthz"})
	first := instancesOf(t, h, app, "v1", 2)
	os.Remove(filepath.Join(mark, "log"))

	load := testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v1 from-bundle", 50)

	lines, err := h.scale(app, 4)
	out := strings.Join(lines, "\n")
	if err != nil {
		t.Fatalf("scale to 4: %v\n%s", err, out)
	}
	if !strings.Contains(out, "plan: AllAtOnce, one batch: scale v1 from 2 to 4 instances") {
		t.Errorf("the scale did not print its plan:\n%s", out)
	}
	grown := instancesOf(t, h, app, "v1", 4)
	routedToInstances(t, h, app)
	for _, id := range first {
		if !slices.Contains(grown, id) {
			t.Errorf("instance %s was replaced by the scale up; want it kept", id)
		}
	}
	testenv.Answered(t, load, "v1 from-bundle", 50)

	lines, err = h.scale(app, 1)
	out = strings.Join(lines, "\n")
	if err != nil {
		t.Fatalf("scale to 1: %v\n%s", err, out)
	}
	instancesOf(t, h, app, "v1", 1)
	routedToInstances(t, h, app)
	drained, stopped := strings.Index(out, "drained "), strings.Index(out, "stopping sprout-")
	if drained < 0 || stopped < 0 || drained > stopped {
		t.Errorf("the scale down did not drain before it stopped:\n%s", out)
	}
	testenv.Answered(t, load, "v1 from-bundle", 50)
	stopLoad(t, load, "the scale 2 → 4 → 1")
	if a, _ := h.ag.App(app); a.InstanceCount() != 1 {
		t.Errorf("capacity after the scale = %d, want 1", a.InstanceCount())
	}
	if got := readLog(t, mark); got != "" {
		t.Errorf("scale ran hooks:\n%s", got)
	}
	hasEvent(t, h, app, "scaled from 2 to 4 instances")
	hasEvent(t, h, app, "scaled from 4 to 1 instances")
}

// TestScaleFailureKeepsTheCount scales up an app whose version is healthy
// on its first instance only: the new instances never become healthy, the
// scale fails, and the one instance that served keeps serving, with not
// one failed request and the app's count unchanged.
func TestScaleFailureKeepsTheCount(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("scalefail"), testenv.FreePort(t)
	mark := t.TempDir()
	firstOnly := writeFiles(t, testenv.Bundle(t, "", "ENV APP_HEALTHY_ONLY_FIRST=/mark/first"), map[string]string{
		"Dockerrun.aws.json": fmt.Sprintf(`{"AWSEBDockerrunVersion": "1", "Volumes": [{"HostDirectory": %q, "ContainerDirectory": "/mark"}]}`, mark),
	})
	h.mustDeploy(app, "v1", firstOnly, map[string]string{"port": fmt.Sprint(port), "health_path": "/healthz", "health_deadline": "3s"})
	before := instancesOf(t, h, app, "v1", 1)

	load := testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v1 ", 50)
	lines, err := h.scale(app, 3)
	out := strings.Join(lines, "\n")
	if err == nil {
		t.Fatalf("the scale to 3 succeeded:\n%s", out)
	}
	if !strings.Contains(err.Error(), "health") {
		t.Errorf("the error does not say the health check failed: %v", err)
	}
	testenv.Answered(t, load, "v1 ", 50)
	stopLoad(t, load, "the failed scale and its undo")
	sameContainers(t, before, instancesOf(t, h, app, "v1", 1))
	routedToInstances(t, h, app)
	if a, _ := h.ag.App(app); a.InstanceCount() != 1 {
		t.Errorf("capacity after the failed scale = %d, want 1", a.InstanceCount())
	}
	if v, _ := h.st.Version(app, "v1"); v.Status != store.StatusServing {
		t.Errorf("v1 is %s after the failed scale, want serving", v.Status)
	}
}

// TestScaleRefusals: scale refuses an app that serves nothing, a count
// out of range, and more than one instance of a ProxyServer none app,
// each with the fix; abort of an app with nothing running says so.
func TestScaleRefusals(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	empty := testenv.Name("empty")
	if _, err := h.client.SetEnv(ctx, empty, api.EnvChange{Set: map[string]string{"A": "1"}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := h.scale(empty, 2); err == nil || !strings.Contains(err.Error(), "serves no version") || !strings.Contains(err.Error(), "sprout deploy --app "+empty) {
		t.Errorf("scale of an app with no version: %v", err)
	}
	if _, err := h.scale(empty, 65); err == nil || !strings.Contains(err.Error(), "from 1 to 64") {
		t.Errorf("scale to 65: %v", err)
	}
	if _, err := h.scale("nosuchapp", 2); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("scale of an unknown app: %v", err)
	}
	if res, err := h.client.Abort(ctx, empty); err != nil || res.Aborted != "" {
		t.Errorf("abort with nothing running = %+v, %v; want nothing aborted", res, err)
	}

	direct, port := testenv.Name("direct"), testenv.FreePort(t)
	none := map[string]string{".ebextensions/proxy.config": "option_settings:\n  aws:elasticbeanstalk:environment:proxy:\n    ProxyServer: none\n"}
	h.mustDeploy(direct, "v1", writeFiles(t, testenv.Bundle(t, ""), none), portParam(port))
	_, err := h.scale(direct, 2)
	if err == nil || !strings.Contains(err.Error(), "ProxyServer none") || !strings.Contains(err.Error(), "1 instance") {
		t.Errorf("scale of a ProxyServer none app to 2: %v", err)
	}
	if strings.Count(err.Error(), ". ") > 0 {
		t.Errorf("the refusal is more than one sentence: %v", err)
	}
	if lines, err := h.scale(direct, 1); err != nil || !strings.Contains(strings.Join(lines, "\n"), "nothing to do") {
		t.Errorf("scale of a ProxyServer none app to 1: %v %v", err, lines)
	}
	if _, body := get(t, port, "/"); body != "v1 " {
		t.Errorf("GET after the refused scale = %q", body)
	}
}

// TestAbortMidRollout aborts a rolling deploy of a slow-booting version to
// four instances once its second batch runs: the deploy fails, saying it
// was aborted; every instance is v1 again, on the same containers; v2 is
// recorded as failed; and not one request fails.
func TestAbortMidRollout(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("abort"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), map[string]string{"port": fmt.Sprint(port), "instances": "4", "health_path": "/healthz"})
	before := instancesOf(t, h, app, "v1", 4)

	load := testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v1 ", 50)
	var (
		once    sync.Once
		aborted = make(chan error, 1)
		res     api.AbortResult
	)
	slow := testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=3s")
	_, lines, err := h.deployWatching(app, "v2", slow, map[string]string{"policy": "Rolling", "batch_size": "1", "batch_size_type": "Fixed"}, func(m api.Message) {
		if strings.HasPrefix(m.Line, "batch 2/4") {
			// The abort returns once the deploy is undone: not on the
			// goroutine that reads the deploy's stream.
			once.Do(func() {
				go func() {
					var err error
					res, err = h.client.Abort(context.Background(), app)
					aborted <- err
				}()
			})
		}
	})
	out := strings.Join(lines, "\n")
	if err == nil {
		t.Fatalf("the deploy was not aborted:\n%s", out)
	}
	if !strings.Contains(err.Error(), "aborted by `sprout abort`") {
		t.Errorf("the deploy's error does not say it was aborted: %v\n%s", err, out)
	}
	if !strings.Contains(out, "aborted by `sprout abort`: every instance goes back to v1") {
		t.Errorf("the deploy's output does not show the abort:\n%s", out)
	}
	var se *api.OpError
	if errors.As(err, &se) && se.Step != "" {
		t.Errorf("the abort is reported as a failure of step %s: %v", se.Step, err)
	}
	if err := <-aborted; err != nil {
		t.Fatalf("abort: %v", err)
	}
	if res.Aborted != "deploy" || res.Serving != "v1" || res.Instances != 4 {
		t.Errorf("abort = %+v, want the deploy aborted and v1 on 4 instances", res)
	}
	testenv.Answered(t, load, "v1 ", 50)
	if r := stopLoad(t, load, "the aborted deploy and its undo"); r.Bodies["v2 "] == 0 {
		t.Errorf("load: %s; want v2's first batch to have served", r)
	}
	sameContainers(t, before, instancesOf(t, h, app, "v1", 4))
	routedToInstances(t, h, app)
	v, err := h.st.Version(app, "v2")
	if err != nil || v.Status != store.StatusFailed || v.Error != agent.ErrAborted.Error() {
		t.Errorf("v2 = %+v, %v; want failed, aborted", v, err)
	}
	hasEvent(t, h, app, "abort of the running deploy requested")
	if res, err := h.client.Abort(context.Background(), app); err != nil || res.Aborted != "" {
		t.Errorf("a second abort = %+v, %v; want nothing to abort", res, err)
	}
}

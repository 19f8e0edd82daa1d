package agent_test

import (
	"context"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/runtime"
)

// instancesOf checks that app runs want instances of label, each a
// running container of that version that the proxy routes to, and
// returns their container IDs.
func instancesOf(t *testing.T, h *harness, app, label string, want int) []string {
	t.Helper()
	a, err := h.st.App(app)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Instances) != want || a.Serving != label {
		t.Fatalf("%s serves %s on %d instances %+v, want %d of %s", app, a.Serving, len(a.Instances), a.Instances, want, label)
	}
	var ids []string
	for _, in := range a.Instances {
		out, err := exec.Command("docker", "inspect", "-f", `{{.State.Running}} {{index .Config.Labels "`+runtime.LabelLabel+`"}}`, in.ContainerID).Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != "true "+label {
			t.Errorf("instance %s: %q %v, want a running container of %s", in.Name, got, err, label)
		}
		ids = append(ids, in.ContainerID)
	}
	if n := len(h.px.Targets(app)); n != want {
		t.Errorf("the proxy routes %s to %d targets, want %d", app, n, want)
	}
	if got := appContainers(t, app); len(got) != want {
		t.Errorf("%d containers of %s on the engine, want %d", len(got), app, want)
	}
	return ids
}

func appContainers(t *testing.T, app string) []string {
	t.Helper()
	out, err := exec.Command("docker", "ps", "-aq", "--no-trunc", "--filter", "label="+runtime.LabelApp+"="+app).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))
}

// TestPoliciesWithFourInstancesUnderLoad deploys a new version to four
// instances under every policy while a client that never retries sends
// requests: none may fail, and each policy runs its batches.
func TestPoliciesWithFourInstancesUnderLoad(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	bundle := testenv.Bundle(t, "")
	for _, tc := range []struct {
		policy  string
		params  map[string]string
		batches int
		// steps is what the rotation holds after each route, as
		// "<instances of v1>+<instances of v2>".
		steps []string
	}{
		{"AllAtOnce", nil, 1, []string{"0+4"}},
		{"Rolling", map[string]string{"batch_size": "25"}, 4, []string{"3+0", "3+1", "2+1", "2+2", "1+2", "1+3", "0+3", "0+4"}},
		{"RollingWithAdditionalBatch", map[string]string{"batch_size": "2", "batch_size_type": "Fixed"}, 2, []string{"4+2", "2+2", "2+4", "0+4"}},
		{"Immutable", nil, 1, []string{"0+4"}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			app, port := testenv.Name("pol"), testenv.FreePort(t)
			h.mustDeploy(app, "v1", bundle, map[string]string{"port": fmt.Sprint(port), "instances": "4", "health_path": "/healthz"})
			instancesOf(t, h, app, "v1", 4)

			load := testenv.Load(t, port, 8)
			testenv.Answered(t, load, "v1 ", 50)
			params := map[string]string{"policy": tc.policy}
			maps.Copy(params, tc.params)
			var steps []string
			h.routes.set(func(routed string, backends []proxy.Backend) {
				if routed == app {
					steps = append(steps, rotation(t, port, app, backends))
				}
			})
			_, lines, err := h.deploy(app, "v2", bundle, params)
			h.routes.set(nil)
			out := strings.Join(lines, "\n")
			if err != nil {
				t.Fatalf("deploy: %v\n%s", err, out)
			}
			if !slices.Equal(steps, tc.steps) {
				t.Errorf("the rotation went %v, want %v (instances of v1+v2 after each route)\n%s", steps, tc.steps, out)
			}
			if tc.batches > 1 && !strings.Contains(out, fmt.Sprintf("batch %d/%d", tc.batches, tc.batches)) {
				t.Errorf("the deploy did not run %d batches:\n%s", tc.batches, out)
			}
			if !strings.Contains(out, "plan: "+tc.policy) {
				t.Errorf("the deploy did not print its plan:\n%s", out)
			}
			testenv.Answered(t, load, "v2 ", 50)
			r := load.Stop()
			t.Logf("load during the %s deploy: %s", tc.policy, r)
			if r.Failed != 0 {
				t.Errorf("%d requests failed during the %s deploy: %s", r.Failed, tc.policy, r)
			}
			servedBy(t, port, instancesOf(t, h, app, "v2", 4))
		})
	}
}

// rotation checks one route of app as the agent installs it: each backend
// is a running container of the version the route gives it, and requests
// to port reach those containers and no other. It returns the count of
// each version, as "<v1>+<v2>".
func rotation(t *testing.T, port int, app string, backends []proxy.Backend) string {
	out, err := exec.Command("docker", "ps", "-q", "--no-trunc", "--filter", "label="+runtime.LabelApp+"="+app).Output()
	if err != nil {
		t.Errorf("docker ps: %v", err)
		return "?"
	}
	type container struct{ id, label string }
	at := map[string]container{}
	if ids := strings.Fields(string(out)); len(ids) > 0 {
		out, err = exec.Command("docker", append([]string{"inspect", "-f", `{{.Id}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}} {{index .Config.Labels "` + runtime.LabelLabel + `"}}`}, ids...)...).Output()
		if err != nil {
			t.Errorf("docker inspect: %v", err)
			return "?"
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) == 3 {
				at[f[1]] = container{f[0][:12], f[2]}
			}
		}
	}
	count := map[string]int{}
	routed := map[string]bool{}
	for _, b := range backends {
		c, ok := at[strings.TrimSuffix(b.Addr, ":8080")]
		if !ok || c.label != b.Version {
			t.Errorf("routed to %s as %s, but the running container there is %+v", b.Addr, b.Version, c)
		}
		count[b.Version]++
		routed[c.id] = true
	}
	for range 2 * len(backends) {
		code, host := get(t, port, "/env?k=HOSTNAME")
		if code != 200 || !routed[host] {
			t.Errorf("GET /env?k=HOSTNAME = %d %q, not one of the routed instances %v", code, host, routed)
		}
	}
	return fmt.Sprintf("%d+%d", count["v1"], count["v2"])
}

// servedBy checks that requests to port are answered by each of the
// containers ids and by no other: each instance says which container it
// is (its hostname is the container's short ID).
func servedBy(t *testing.T, port int, ids []string) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id[:12]] = true
	}
	seen := map[string]bool{}
	for range 60 {
		code, host := get(t, port, "/env?k=HOSTNAME")
		if code != 200 || !want[host] {
			t.Fatalf("GET /env?k=HOSTNAME = %d %q, not one of the instances %v", code, host, ids)
		}
		seen[host] = true
	}
	if len(seen) != len(want) {
		t.Errorf("60 requests reached %d of the %d instances: %v", len(seen), len(want), seen)
	}
}

// TestFailedBatchRevertsEveryInstance deploys a version that is healthy
// on its first instance and unhealthy on the others: the rolling deploy
// fails in batch 2, and every instance goes back to the version that was
// serving, automatically, with no failed request.
func TestFailedBatchRevertsEveryInstance(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("revert"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), map[string]string{"port": fmt.Sprint(port), "instances": "4", "health_path": "/healthz"})
	before := instancesOf(t, h, app, "v1", 4)

	mark := t.TempDir()
	bad := writeFiles(t, testenv.Bundle(t, "", "ENV APP_HEALTHY_ONLY_FIRST=/mark/first"), map[string]string{
		"Dockerrun.aws.json": fmt.Sprintf(`{"AWSEBDockerrunVersion": "1", "Volumes": [{"HostDirectory": %q, "ContainerDirectory": "/mark"}]}`, mark),
	})
	load := testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v1 ", 50)
	_, lines, err := h.deploy(app, "v2", bad, map[string]string{"policy": "Rolling", "batch_size": "1", "batch_size_type": "Fixed", "health_deadline": "3s"})
	out := strings.Join(lines, "\n")
	if err == nil {
		t.Fatalf("v2 deployed:\n%s", out)
	}
	if !strings.Contains(err.Error(), "batch 2/4") {
		t.Errorf("the error does not name batch 2: %v", err)
	}
	if !strings.Contains(out, "traffic went back to") {
		t.Errorf("the output does not say traffic went back:\n%s", out)
	}
	testenv.Answered(t, load, "v1 ", 50)
	if r := stopLoad(t, load, "the failed deploy and its undo"); r.Bodies["v2 "] == 0 {
		t.Errorf("load: %s; want v2's first instance to have served", r)
	}
	sameContainers(t, before, instancesOf(t, h, app, "v1", 4))
}

// TestRestartKeepsEveryInstance restarts the agent under an app of three
// instances: all three are adopted again, none is taken for an orphan.
func TestRestartKeepsEveryInstance(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("keep"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), map[string]string{"port": fmt.Sprint(port), "instances": "3"})
	before := instancesOf(t, h, app, "v1", 3)
	h.restart()
	after := instancesOf(t, h, app, "v1", 3)
	if !slices.Equal(before, after) {
		t.Errorf("instances after the restart = %v, want %v", after, before)
	}
	if code, body := get(t, port, "/"); code != 200 || body != "v1 " {
		t.Errorf("GET / after the restart = %d %q", code, body)
	}
	// Each instance's output is its own, named, in the app's logs.
	var logs strings.Builder
	if err := h.ag.Logs(context.Background(), agent.LogRequest{App: app}, &logs); err != nil {
		t.Fatal(err)
	}
	a, _ := h.st.App(app)
	for _, in := range a.Instances {
		if !strings.Contains(logs.String(), in.Name+" | ") {
			t.Errorf("the logs have no line of instance %s:\n%s", in.Name, logs.String())
		}
	}
}

// TestCanary runs TrafficSplitting twice under load: a good canary is
// promoted, and one that answers 5xx to a third of its requests is rolled
// back after its evaluation, with the figures that decided it; every
// instance is then the old version's again.
func TestCanary(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("canary"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), map[string]string{"port": fmt.Sprint(port), "instances": "2", "health_path": "/healthz"})
	canary := map[string]string{"policy": "TrafficSplitting", "canary_percent": "20", "evaluation_time": "4s"}

	load := testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v1 ", 50)
	_, lines, err := h.deploy(app, "v2", testenv.Bundle(t, ""), canary)
	out := strings.Join(lines, "\n")
	if err != nil {
		t.Fatalf("the good canary: %v\n%s", err, out)
	}
	for _, want := range []string{"plan: TrafficSplitting, 20% of requests to v2 for 4s, then all", "(20% of requests to v2)", "canary v2: v2: ", "not clearly worse; promoted"} {
		if !strings.Contains(out, want) {
			t.Errorf("the good canary's output lacks %q:\n%s", want, out)
		}
	}
	testenv.Answered(t, load, "v2 ", 50)
	if r := load.Stop(); r.Failed != 0 {
		t.Errorf("load during the good canary: %s", r)
	}
	before := instancesOf(t, h, app, "v2", 2)

	load = testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v2 ", 50)
	_, lines, err = h.deploy(app, "v3", testenv.Bundle(t, "", "ENV APP_FAIL_EVERY=3"), canary)
	out = strings.Join(lines, "\n")
	if err == nil {
		t.Fatalf("the bad canary was promoted:\n%s", out)
	}
	t.Logf("the bad canary: %v", err)
	if !strings.Contains(err.Error(), "canary v3 rolled back") || !strings.Contains(err.Error(), "5xx share") || !strings.Contains(err.Error(), "is clearly worse than 0.0%") {
		t.Errorf("the bad canary's error does not give the figures: %v", err)
	}
	after := instancesOf(t, h, app, "v2", 2)
	if !slices.Equal(before, after) {
		t.Errorf("instances after the rollback = %v, want v2's %v", after, before)
	}
	// Once rolled back, nothing fails any more.
	mid := load.Now()
	testenv.Answered(t, load, "v2 ", 200)
	if r := load.Stop(); r.Failed != mid.Failed {
		t.Errorf("requests failed after the canary was rolled back: %s (%d failed before)", r, mid.Failed)
	}
}

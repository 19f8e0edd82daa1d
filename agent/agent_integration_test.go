package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

func inspect(t *testing.T, id string) (labels map[string]string, restart string, logCfg map[string]string, hostIP string, env []string, stopTimeout int) {
	t.Helper()
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ins, err := c.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range ins.HostConfig.PortBindings {
		for _, x := range b {
			hostIP = x.HostIP
		}
	}
	if ins.Config.StopTimeout != nil {
		stopTimeout = *ins.Config.StopTimeout
	}
	return ins.Config.Labels, string(ins.HostConfig.RestartPolicy.Name), ins.HostConfig.LogConfig.Config, hostIP, ins.Config.Env, stopTimeout
}

// TestDeployRunsEveryStep deploys a first version and checks each numbered
// step of a deploy left what it should.
func TestDeployRunsEveryStep(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("steps"), testenv.FreePort(t)
	dir := testenv.Bundle(t, "", "ENV GREETING=hi")

	last := h.mustDeploy(app, "v1", dir, portParam(port))

	// 6. recorded as serving, with every step timed.
	v := last.Result
	if v == nil || v.Status != store.StatusServing || v.Label != "v1" || v.ContainerPort != 8080 {
		t.Fatalf("result = %+v", v)
	}
	// A first deploy has nothing to drain or retire.
	for _, step := range []string{"unpack", "build", "start", "health", "swap"} {
		if _, ok := v.Steps[step]; !ok {
			t.Errorf("step %s not timed: %v", step, v.Steps)
		}
	}
	// 5. the proxy serves it on the public port.
	if code, body := get(t, port, "/"); code != 200 || body != "v1 hi" {
		t.Errorf("GET / = %d %q", code, body)
	}
	st, err := h.client.Status(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	if st.Serving != "v1" || st.Port != port || st.Container != "running" || st.Health != "ok" || st.Status != "Ok" || len(st.Targets) != 1 {
		t.Errorf("status = %+v", st)
	}
	// 3. the container carries labels, a loopback port, limits and PORT.
	labels, restart, logCfg, hostIP, env, stopTimeout := inspect(t, st.ContainerID)
	if labels[runtime.LabelApp] != app || labels[runtime.LabelLabel] != "v1" || labels[runtime.LabelAgent] != h.ag.ID() {
		t.Errorf("labels = %v", labels)
	}
	if restart != "unless-stopped" || logCfg["max-size"] == "" || hostIP != "127.0.0.1" || stopTimeout != 2 {
		t.Errorf("restart=%q log=%v hostIP=%q stop=%d", restart, logCfg, hostIP, stopTimeout)
	}
	if !contains(env, "PORT=8080") || !contains(env, "SPROUT_VERSION=v1") {
		t.Errorf("env = %v", env)
	}
	// 2. the image is tagged with app and label, and labelled.
	info, err := h.docker.Image(context.Background(), "sprout-"+h.ag.ID()+"/"+app+":v1")
	if err != nil || info.ID != v.ImageID {
		t.Errorf("image: %+v %v", info, err)
	}
	// A second deploy of the same label is refused; its bundle is unchanged.
	if _, _, err := h.deploy(app, "v1", dir, nil); err == nil || !strings.Contains(err.Error(), "already has a version v1") {
		t.Errorf("redeploy of v1: %v", err)
	}
	// An unchanged rebuild hits the layer cache.
	last = h.mustDeploy(app, "v2", dir, nil)
	if ms := last.Result.Steps["build"]; ms > 5000 {
		t.Errorf("cached rebuild took %dms", ms)
	}
	for _, step := range []string{"unpack", "build", "start", "health", "swap", "drain", "retire"} {
		if _, ok := last.Result.Steps[step]; !ok {
			t.Errorf("step %s of the second deploy not timed: %v", step, last.Result.Steps)
		}
	}
	if got := testenv.Containers(t, h.ag.ID()); len(got) != 1 {
		t.Errorf("%d containers after the swap, want only the serving one", len(got))
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// TestFailedDeploysKeepTheServingVersion covers each way a new version can
// fail: the old one keeps serving and nothing of the new one is left.
func TestFailedDeploysKeepTheServingVersion(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("fail"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), map[string]string{"port": fmt.Sprint(port), "health_path": "/healthz"})

	cases := []struct {
		name, label, dockerfile string
		params                  map[string]string
		step                    string
		want                    []string
	}{
		{"broken build", "b1", "FROM scratch\nCOPY missing /missing\nEXPOSE 8080\n", nil, "build", []string{"missing"}},
		{"crash loop", "b2", testenv.DefaultDockerfile + "ENV APP_CRASH=1\n", nil, "health", []string{"exited with code 3", "crashing on purpose"}},
		{"never healthy", "b3", testenv.DefaultDockerfile + "ENV APP_HEALTH=500\n", map[string]string{"health_deadline": "2s"}, "health",
			[]string{"no 2 consecutive passing health checks within 2s", "last health checks", "500"}},
		{"no port", "b4", "FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n", nil, "build", []string{"--container-port"}},
		{"bad setting", "b5", "", map[string]string{"health_interval": "soon"}, "", []string{"health_interval"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := testenv.Bundle(t, tc.dockerfile)
			_, lines, err := h.deploy(app, tc.label, dir, tc.params)
			if err == nil {
				t.Fatalf("deploy succeeded:\n%s", strings.Join(lines, "\n"))
			}
			var op *api.OpError
			if tc.step != "" && (!errors.As(err, &op) || op.Step != tc.step) {
				t.Errorf("failed at %v, want step %s", err, tc.step)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			if code, body := get(t, port, "/"); code != 200 || !strings.HasPrefix(body, "v1") {
				t.Errorf("after the failed deploy GET / = %d %q, want v1", code, body)
			}
			if got := testenv.Containers(t, h.ag.ID()); len(got) != 1 {
				t.Errorf("%d containers left, want only v1's", len(got))
			}
			if tc.step == "" {
				return
			}
			v, err := h.st.Version(app, tc.label)
			if err != nil || v.Status != store.StatusFailed || v.FailedStep != tc.step || v.Error == "" {
				t.Errorf("version record = %+v, %v", v, err)
			}
		})
	}
	st, _ := h.client.Status(context.Background(), app)
	if st.Serving != "v1" {
		t.Errorf("serving %q after failures", st.Serving)
	}
}

// TestHealthcheckInstructionIsHonoured waits on the image's own HEALTHCHECK.
func TestHealthcheckInstructionIsHonoured(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("hc"), testenv.FreePort(t)
	df := testenv.DefaultDockerfile + "HEALTHCHECK --interval=1s --timeout=2s CMD [\"/app\", \"-check\"]\n"
	_, lines, err := h.deploy(app, "v1", testenv.Bundle(t, df), portParam(port))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "the image's HEALTHCHECK passes") {
		t.Errorf("the wait did not use HEALTHCHECK:\n%s", strings.Join(lines, "\n"))
	}
	st, _ := h.client.Status(context.Background(), app)
	if st.Health != "healthy" {
		t.Errorf("health = %q", st.Health)
	}
	// A HEALTHCHECK that never passes fails the deploy.
	_, _, err = h.deploy(app, "v2", testenv.Bundle(t, df, "ENV APP_HEALTH=503"), map[string]string{"health_deadline": "4s"})
	if err == nil || !strings.Contains(err.Error(), "HEALTHCHECK") {
		t.Errorf("unhealthy HEALTHCHECK: %v", err)
	}
}

// TestRollbackAndSetenv rolls back and changes the environment, each with
// the same health-gated swap.
func TestRollbackAndSetenv(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("rb"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), portParam(port))
	h.mustDeploy(app, "v2", testenv.Bundle(t, ""), nil)
	ctx := context.Background()

	if _, err := h.client.Rollback(ctx, app, api.RollbackRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, port, "/"); !strings.HasPrefix(body, "v1") {
		t.Errorf("after rollback: %q", body)
	}
	if _, err := h.client.Rollback(ctx, app, api.RollbackRequest{To: "v2"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, port, "/"); !strings.HasPrefix(body, "v2") {
		t.Errorf("after rollback --to v2: %q", body)
	}
	if _, err := h.client.Rollback(ctx, app, api.RollbackRequest{To: "v9"}, nil); err == nil || !strings.Contains(err.Error(), "v9") {
		t.Errorf("rollback to a missing label: %v", err)
	}

	if _, err := h.client.SetEnv(ctx, app, api.EnvChange{Set: map[string]string{"GREETING": "howdy", "API_TOKEN": "s3cret"}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, port, "/"); body != "v2 howdy" {
		t.Errorf("after setenv: %q", body)
	}
	env, _ := h.client.Env(ctx, app, false)
	if env.Env["API_TOKEN"] == "s3cret" || env.Env["GREETING"] != "howdy" {
		t.Errorf("printenv = %v", env)
	}
	// An environment that makes the app crash is not applied.
	_, err := h.client.SetEnv(ctx, app, api.EnvChange{Set: map[string]string{"APP_CRASH": "1"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "exited with code 3") {
		t.Fatalf("crashing env: %v", err)
	}
	if _, body := get(t, port, "/"); body != "v2 howdy" {
		t.Errorf("after a failed setenv: %q", body)
	}
	env, _ = h.client.Env(ctx, app, true)
	if _, ok := env.Env["APP_CRASH"]; ok || env.Env["API_TOKEN"] != "s3cret" {
		t.Errorf("env after failed change = %v", env.Env)
	}
	// Deleting a property and invalid keys.
	if _, err := h.client.SetEnv(ctx, app, api.EnvChange{Set: map[string]string{"BAD KEY": "x"}}, nil); err == nil {
		t.Error("invalid key accepted")
	}
	if _, err := h.client.SetEnv(ctx, app, api.EnvChange{Unset: []string{"GREETING"}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("after unset: %q", body)
	}
	vs, _ := h.client.Versions(ctx, app)
	if len(vs) != 2 || vs[0].Label != "v2" || vs[0].Status != "serving" || vs[1].Status != "retired" {
		t.Errorf("versions = %+v", vs)
	}
}

// TestSwapsUnderLoadDropNothing deploys 20 versions in a row while a
// non-retrying client hammers the app, and counts every failed request.
func TestSwapsUnderLoadDropNothing(t *testing.T) {
	t.Parallel()
	const swaps = 20
	h := newHarness(t)
	app, port := testenv.Name("swap"), testenv.FreePort(t)
	dir := testenv.Bundle(t, "")
	h.mustDeploy(app, "v0", dir, map[string]string{"port": fmt.Sprint(port), "health_path": "/healthz"})

	load := testenv.Load(t, port, 4)
	for i := 1; i <= swaps; i++ {
		h.mustDeploy(app, fmt.Sprintf("v%d", i), dir, nil)
	}
	// The load carries on after the last version's predecessor is removed.
	testenv.Answered(t, load, fmt.Sprintf("v%d ", swaps), 20)
	r := load.Stop()
	t.Logf("%d swaps under load: %s; versions answering: %d", swaps, r, len(r.Bodies))
	if r.Failed != 0 {
		t.Fatalf("%d requests failed during %d swaps: %s", r.Failed, swaps, r)
	}
	if len(r.Bodies) < swaps {
		t.Errorf("only %d versions answered, want %d", len(r.Bodies), swaps+1)
	}
	if got := testenv.Containers(t, h.ag.ID()); len(got) != 1 {
		t.Errorf("%d containers left", len(got))
	}
}

// TestSlowRequestFinishesDuringSwap keeps a request in flight across a swap.
func TestSlowRequestFinishesDuringSwap(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("slow"), testenv.FreePort(t)
	dir := testenv.Bundle(t, "")
	h.mustDeploy(app, "v1", dir, portParam(port))
	done := make(chan string, 1)
	go func() { _, body := get(t, port, "/slow?ms=1500"); done <- body }()
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := h.flying.count(app); n != 1 {
			return fmt.Errorf("%d requests in flight, want the slow one", n)
		}
		return nil
	})
	h.mustDeploy(app, "v2", dir, nil)
	if body := <-done; body != "v1 slow" {
		t.Errorf("slow request across the swap got %q", body)
	}
}

// TestDeploysOfOneAppAreSerialised runs two deploys at once.
func TestDeploysOfOneAppAreSerialised(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("lock"), testenv.FreePort(t)
	fast := testenv.Bundle(t, "")
	slow := testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=4s")
	h.mustDeploy(app, "v1", fast, portParam(port))

	var wg sync.WaitGroup
	var first error
	started := make(chan struct{})
	wg.Go(func() {
		_, _, first = h.deployWatching(app, "v2", slow, nil, func(m api.Message) {
			if m.Step == "health" && m.Line == "" {
				close(started)
			}
		})
	})
	<-started
	_, _, err := h.deploy(app, "v3", fast, map[string]string{"no_wait": "1"})
	if err == nil || !strings.Contains(err.Error(), "in progress") {
		t.Errorf("--no-wait during a deploy: %v", err)
	}
	_, lines, err := h.deploy(app, "v4", fast, nil)
	if err != nil || !strings.Contains(strings.Join(lines, "\n"), "waiting for it to finish") {
		t.Errorf("queued deploy: %v\n%s", err, strings.Join(lines, "\n"))
	}
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
	if _, body := get(t, port, "/"); !strings.HasPrefix(body, "v4") {
		t.Errorf("serving %q, want v4", body)
	}
}

// TestPortChange moves an app to another public port with its next deploy.
func TestPortChange(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, a, b := testenv.Name("port"), testenv.FreePort(t), testenv.FreePort(t)
	dir := testenv.Bundle(t, "")
	h.mustDeploy(app, "v1", dir, portParam(a))
	h.mustDeploy(app, "v2", dir, portParam(b))
	if _, body := get(t, b, "/"); !strings.HasPrefix(body, "v2") {
		t.Errorf("new port: %q", body)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a))
		if err != nil {
			return nil
		}
		c.Close()
		return errors.New("the old port still accepts connections")
	})
	// A port held by another app is refused before anything is built.
	other := testenv.Name("other")
	if _, _, err := h.deploy(other, "v1", dir, portParam(b)); err == nil || !strings.Contains(err.Error(), "already serves app "+app) {
		t.Errorf("port clash: %v", err)
	}
}

// TestRestartReadoptsContainers restarts the agent: the serving container
// is routed again, an orphan of an interrupted deploy is removed, and a
// pending version is recorded as interrupted.
func TestRestartReadoptsContainers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("adopt"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), portParam(port))
	before, _ := h.client.Status(context.Background(), app)

	// What a deploy killed mid-way leaves: a labelled container and a
	// pending version.
	orphan, err := h.docker.Run(context.Background(), runtime.ContainerSpec{
		Name: testenv.Name("sprout-orphan"), Image: "sprout-" + h.ag.ID() + "/" + app + ":v1", ContainerPort: 8080, Env: []string{"PORT=8080"},
		Labels: map[string]string{runtime.LabelAgent: h.ag.ID(), runtime.LabelApp: app, runtime.LabelLabel: "v2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	h.st.PutVersion(&store.Version{App: app, Label: "v2", Status: store.StatusPending, CreatedAt: time.Now()})

	h.restart()
	after, err := h.client.Status(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	if after.ContainerID != before.ContainerID || after.Serving != "v1" {
		t.Errorf("status after restart = %+v, want the same container", after)
	}
	if _, body := get(t, port, "/"); !strings.HasPrefix(body, "v1") {
		t.Errorf("after restart: %q", body)
	}
	if _, err := h.docker.Container(context.Background(), orphan.ID); err == nil {
		t.Error("the orphan container is still there")
	}
	v, _ := h.st.Version(app, "v2")
	if v.Status != store.StatusFailed || v.FailedStep != "interrupted" {
		t.Errorf("pending version after restart = %+v", v)
	}

	// A serving container removed behind the agent's back is recreated.
	h.stop()
	h.docker.Remove(context.Background(), before.ContainerID)
	h.start()
	testenv.Eventually(t, 30*time.Second, func() error {
		if st, _ := h.client.Status(context.Background(), app); st.Container != "running" || st.ContainerID == before.ContainerID {
			return fmt.Errorf("serving container not recreated: %+v", st)
		}
		return nil
	})
	if _, body := get(t, port, "/"); !strings.HasPrefix(body, "v1") {
		t.Errorf("after recreate: %q", body)
	}
}

// TestServingContainerIsFollowed crashes the serving container: the engine
// restarts it (its restart policy is set once it serves), and the watcher
// keeps the route on the container's current address.
func TestServingContainerIsFollowed(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("follow"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), portParam(port))
	st, _ := h.client.Status(context.Background(), app)

	// A crash: the app's process dies (`docker kill` would count as a
	// manual stop, which the engine does not undo).
	pid, err := exec.Command("docker", "inspect", "-f", "{{.State.Pid}}", st.ContainerID).Output()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("kill", "-9", strings.TrimSpace(string(pid))).CombinedOutput(); err != nil {
		testenv.Missing(t, fmt.Sprintf("cannot kill the app's process from the host (%v %s)", err, out), "this test needs root")
	}
	// A stale route, as after a restart on another address.
	h.px.Swap(app, []string{"127.0.0.1:1"})
	testenv.Eventually(t, 30*time.Second, func() error {
		if cur, _ := h.client.Status(context.Background(), app); cur.Restarts < 1 || cur.Container != "running" || len(cur.Targets) != 1 || cur.Targets[0] == "127.0.0.1:1" {
			return fmt.Errorf("not followed: %+v", cur)
		}
		// The restarted process may not listen yet when the engine says
		// running: its answer, through the followed route, is awaited.
		if code, body := get(t, port, "/"); code != 200 || !strings.HasPrefix(body, "v1") {
			return fmt.Errorf("after the crash GET = %d %q", code, body)
		}
		return nil
	})
	evs, _ := h.client.Events(context.Background(), app, 10)
	found := false
	for _, e := range evs {
		found = found || e.Kind == "restart"
	}
	if !found {
		t.Errorf("no restart event in %+v", evs)
	}
}

// TestDockerrunBundles deploys a Dockerrun.aws.json naming an image already
// on the host, and one naming an image that cannot be had.
func TestDockerrunBundles(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("dockerrun"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), portParam(port))

	write := func(image string) string {
		dir := t.TempDir()
		run := fmt.Sprintf(`{"AWSEBDockerrunVersion": "1", "Image": {"Name": %q, "Update": "false"}, "Ports": [{"ContainerPort": 8080}]}`, image)
		if err := os.WriteFile(dir+"/Dockerrun.aws.json", []byte(run), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dir := write("sprout-" + h.ag.ID() + "/" + app + ":v1")
	_, lines, err := h.deploy(app, "v2", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "using the local image sprout-"+h.ag.ID()+"/"+app+":v1") {
		t.Errorf("deploy did not say which image it used:\n%s", strings.Join(lines, "\n"))
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("GET = %q", body)
	}
	_, _, err = h.deploy(app, "v3", write("127.0.0.1:1/nowhere/app:1"), nil)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1/nowhere/app:1 is not on this host and could not be pulled") {
		t.Errorf("missing image: %v", err)
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("after the failed deploy GET = %q", body)
	}
	// Deleting the Dockerrun-based version's tag must not touch the image
	// it was made from.
	if _, err := h.docker.Image(context.Background(), "sprout-"+h.ag.ID()+"/"+app+":v1"); err != nil {
		t.Errorf("the named image is gone: %v", err)
	}
}

// TestOldImagesArePruned keeps the images of the last three earlier
// versions and prunes the rest, which can then no longer be rolled back to.
func TestOldImagesArePruned(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("prune"), testenv.FreePort(t)
	dir := testenv.Bundle(t, "")
	for i := 1; i <= 5; i++ {
		h.mustDeploy(app, fmt.Sprintf("v%d", i), dir, portParam(port))
	}
	ctx := context.Background()
	vs, _ := h.client.Versions(ctx, app)
	pruned := map[string]bool{}
	for _, v := range vs {
		pruned[v.Label] = v.ImagePruned
		_, err := h.docker.Image(ctx, "sprout-"+h.ag.ID()+"/"+app+":"+v.Label)
		if (err == nil) == v.ImagePruned {
			t.Errorf("%s: pruned=%v but image lookup says %v", v.Label, v.ImagePruned, err)
		}
	}
	if !pruned["v1"] || pruned["v2"] || pruned["v3"] || pruned["v4"] || pruned["v5"] {
		t.Errorf("pruned = %v, want only v1", pruned)
	}
	if _, err := h.client.Rollback(ctx, app, api.RollbackRequest{To: "v1"}, nil); err == nil || !strings.Contains(err.Error(), "pruned") {
		t.Errorf("rollback to a pruned version: %v", err)
	}
	if _, err := h.client.Rollback(ctx, app, api.RollbackRequest{To: "v2"}, nil); err != nil {
		t.Errorf("rollback to a kept version: %v", err)
	}
}

// TestFailedFirstDeploy leaves a record to look at and nothing listening.
func TestFailedFirstDeploy(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("first"), testenv.FreePort(t)
	if _, _, err := h.deploy(app, "v1", testenv.Bundle(t, "", "ENV APP_CRASH=1"), portParam(port)); err == nil {
		t.Fatal("a crashing first deploy succeeded")
	}
	vs, err := h.client.Versions(context.Background(), app)
	if err != nil || len(vs) != 1 || vs[0].Status != store.StatusFailed || vs[0].FailedStep != "health" {
		t.Fatalf("versions after a failed first deploy = %+v, %v", vs, err)
	}
	// The failed deploy closed the port it had opened before it answered.
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.Close()
		t.Error("the public port still listens after a failed first deploy")
	}
	h.mustDeploy(app, "v2", testenv.Bundle(t, ""), nil)
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("after a good deploy GET = %q (the port should have been kept)", body)
	}
}

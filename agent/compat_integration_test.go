package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/store"
)

// writeFiles adds files to a bundle directory (testenv.WriteFiles).
func writeFiles(t *testing.T, dir string, files map[string]string) string {
	return testenv.WriteFiles(t, dir, files)
}

// hookBundle is the test app with an .ebextensions file setting MARK and
// GREETING, and hooks that append what they see to $MARK/log.
func hookBundle(t *testing.T, mark string, extra map[string]string) string {
	files := map[string]string{
		".ebextensions/01-env.config":              fmt.Sprintf("option_settings:\n  aws:elasticbeanstalk:application:environment:\n    MARK: %s\n    GREETING: from-bundle\n", mark),
		".platform/hooks/prebuild/01.sh":           "#!/bin/sh\necho \"prebuild $SPROUT_VERSION\" >> \"$MARK/log\"\necho building soon\n",
		".platform/hooks/predeploy/01.sh":          "#!/bin/sh\necho \"predeploy $SPROUT_VERSION $GREETING\" >> \"$MARK/log\"\n",
		".platform/hooks/postdeploy/01.sh":         "#!/bin/sh\necho \"postdeploy $SPROUT_VERSION\" >> \"$MARK/log\"\n",
		".platform/confighooks/predeploy/01.sh":    "#!/bin/sh\necho \"config-predeploy $SPROUT_VERSION $GREETING\" >> \"$MARK/log\"\n",
		".platform/confighooks/postdeploy/01-x.sh": "#!/bin/sh\necho \"config-postdeploy $SPROUT_VERSION\" >> \"$MARK/log\"\n",
	}
	for k, v := range extra {
		files[k] = v
	}
	return writeFiles(t, testenv.Bundle(t, ""), files)
}

func readLog(t *testing.T, mark string) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(mark, "log"))
	return string(b)
}

// TestHooksRunAtTheirPoints runs .platform hooks and confighooks at the
// points Elastic Beanstalk runs them, with the .ebextensions properties
// (and `setenv` winning over them) in their environment, on deploys,
// configuration changes and rollbacks.
func TestHooksRunAtTheirPoints(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("hooks"), testenv.FreePort(t)
	mark := t.TempDir()

	_, lines, err := h.deploy(app, "v1", hookBundle(t, mark, nil), portParam(port))
	out := strings.Join(lines, "\n")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"prebuild: [hooks/prebuild/01.sh] building soon", ".ebextensions: 2 environment properties (GREETING, MARK)", ".platform: 1 predeploy hook(s)", ".platform: 2 confighook(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy output lacks %q:\n%s", want, out)
		}
	}
	if got := readLog(t, mark); got != "prebuild v1\npredeploy v1 from-bundle\npostdeploy v1\n" {
		t.Errorf("hooks of v1 ran as:\n%s", got)
	}
	if _, body := get(t, port, "/"); body != "v1 from-bundle" {
		t.Errorf("GET = %q: the .ebextensions property did not reach the container", body)
	}

	// A configuration deployment runs the confighooks, not the hooks, and
	// a property set with setenv wins over the bundle's.
	os.Remove(filepath.Join(mark, "log"))
	if _, err := h.client.SetEnv(context.Background(), app, api.EnvChange{Set: map[string]string{"GREETING": "mine"}}, nil); err != nil {
		t.Fatal(err)
	}
	if got := readLog(t, mark); got != "config-predeploy v1 mine\nconfig-postdeploy v1\n" {
		t.Errorf("setenv ran hooks:\n%s", got)
	}
	if _, body := get(t, port, "/"); body != "v1 mine" {
		t.Errorf("after setenv GET = %q", body)
	}

	// A rollback runs the target's predeploy and postdeploy hooks again,
	// from its kept bundle.
	h.mustDeploy(app, "v2", hookBundle(t, mark, nil), nil)
	os.Remove(filepath.Join(mark, "log"))
	if _, err := h.client.Rollback(context.Background(), app, api.RollbackRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	if got := readLog(t, mark); got != "predeploy v1 mine\npostdeploy v1\n" {
		t.Errorf("rollback ran hooks:\n%s", got)
	}
}

// TestFailingHooksKeepTheOldVersion fails deploys with a hook that exits
// non-zero, one that hangs, one that is not executable, and a postdeploy
// hook that fails after the swap, which moves traffic back: under load,
// not one request fails, and v1 keeps serving with one container.
func TestFailingHooksKeepTheOldVersion(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("badhooks"), testenv.FreePort(t)
	mark := t.TempDir()
	h.mustDeploy(app, "v1", hookBundle(t, mark, nil), portParam(port))

	load := testenv.Load(t, port, 4)

	pidFile := filepath.Join(mark, "hang.pid")
	cases := []struct {
		label, file, body, step, want string
	}{
		{"v2", ".platform/hooks/predeploy/01.sh", "#!/bin/sh\necho migrating\necho 'no database' >&2\nexit 7\n", "predeploy", "hook .platform/hooks/predeploy/01.sh exited with code 7"},
		{"v3", ".platform/hooks/prebuild/01.sh", "#!/bin/sh\necho $$ > " + pidFile + "\nsleep 60\n", "prebuild", "ran longer than 3s and was killed"},
		{"v4", ".platform/hooks/postdeploy/01.sh", "#!/bin/sh\necho smoke test failed\nexit 1\n", "postdeploy", "hook .platform/hooks/postdeploy/01.sh exited with code 1"},
	}
	for _, tc := range cases {
		last, lines, err := h.deploy(app, tc.label, hookBundle(t, mark, map[string]string{tc.file: tc.body}), nil)
		out := strings.Join(lines, "\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q\n%s", tc.label, err, tc.want, out)
		}
		if oe, ok := err.(*api.OpError); !ok || oe.Step != tc.step {
			t.Errorf("%s: failed step = %+v (last %+v), want %s", tc.label, err, last, tc.step)
		}
		if _, body := get(t, port, "/"); body != "v1 from-bundle" {
			t.Errorf("after the failed %s GET = %q", tc.label, body)
		}
		if n := len(testenv.Containers(t, h.ag.ID())); n != 1 {
			t.Errorf("after the failed %s: %d containers", tc.label, n)
		}
	}
	r := load.Stop()
	t.Logf("load during the failed deploys: %s", r)
	if r.Failed != 0 || r.OK == 0 {
		t.Errorf("load: %s", r)
	}
	if r.Bodies["v4 from-bundle"] == 0 {
		t.Logf("v4 took no requests before its postdeploy hook failed")
	}
	// The hanging hook and what it started are gone.
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 || exec.Command("kill", "-0", strconv.Itoa(pid)).Run() == nil {
		t.Errorf("the timed-out hook (pid %d) still runs", pid)
	}

	// A hook that cannot run is refused before anything starts.
	_, _, err = h.deploy(app, "v5", hookBundle(t, mark, map[string]string{".platform/hooks/predeploy/02.py": "#!/usr/bin/env python3\n"}), nil)
	if err == nil || !strings.Contains(err.Error(), ".platform/hooks/predeploy/02.py: is not executable; run `chmod +x") {
		t.Errorf("non-executable hook: %v", err)
	}
	v, err := h.st.Version(app, "v5")
	if err != nil || v.FailedStep != "unpack" {
		t.Errorf("v5 = %+v, %v; want failed at unpack", v, err)
	}
}

// TestDockerrunRunSettings runs a Dockerfile bundle with a
// Dockerrun.aws.json beside it, as Elastic Beanstalk allows: its Command,
// Entrypoint, Volumes (bundle files through /var/app/current, and a host
// directory) and Logging directory all apply, and a host directory outside
// volumes.host_dirs is refused before anything stops.
func TestDockerrunRunSettings(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("run"), testenv.FreePort(t)
	shared := t.TempDir()
	run := fmt.Sprintf(`{
  "AWSEBDockerrunVersion": "1",
  "Ports": [{"ContainerPort": 8080}],
  "Volumes": [
    {"HostDirectory": "/var/app/current/static", "ContainerDirectory": "/static"},
    {"HostDirectory": %q, "ContainerDirectory": "/shared"}
  ],
  "Logging": "/logs",
  "Entrypoint": ["/app", "-e"],
  "Command": "--flag 'a b'"
}`, shared)
	dir := writeFiles(t, testenv.Bundle(t, ""), map[string]string{
		"Dockerrun.aws.json":       run,
		"static/hello.txt":         "hello from the bundle",
		".ebextensions/env.config": "option_settings:\n  - option_name: APP_LOG_DIR\n    value: /logs\n",
		".dockerignore":            "static\n",
	})
	h.mustDeploy(app, "v1", dir, portParam(port))
	if _, body := get(t, port, "/args"); body != "/app -e --flag a b" {
		t.Errorf("args = %q", body)
	}
	if _, body := get(t, port, "/file?path=/static/hello.txt"); body != "hello from the bundle" {
		t.Errorf("bundle file through /var/app/current = %q", body)
	}
	post(t, port, "/file?path=/shared/out.txt", "written by the app")
	if b, _ := os.ReadFile(filepath.Join(shared, "out.txt")); string(b) != "written by the app" {
		t.Errorf("host directory has %q", b)
	}
	var logs strings.Builder
	if err := h.ag.LogFiles(app, "", 0, &logs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "==> /logs/requests.log <==\nv1 GET /args\n") {
		t.Errorf("log files:\n%s", logs.String())
	}

	bad := writeFiles(t, testenv.Bundle(t, ""), map[string]string{
		"Dockerrun.aws.json": `{"AWSEBDockerrunVersion": "1", "Volumes": [{"HostDirectory": "/etc", "ContainerDirectory": "/x"}]}`,
	})
	_, _, err := h.deploy(app, "v2", bad, nil)
	if err == nil || !strings.Contains(err.Error(), "HostDirectory /etc is outside the host directories bundles may mount (volumes.host_dirs") {
		t.Errorf("host dir outside the allowed ones: %v", err)
	}
	if _, body := get(t, port, "/args"); body != "/app -e --flag a b" {
		t.Errorf("after the refused deploy args = %q", body)
	}
}

// TestPersistentVolumes keeps an app's data (a volume declared with
// `sprout volumes add`, and one for the image's VOLUME) across deploys, a
// rollback, an agent restart and the app's removal, until it is removed
// with purge.
func TestPersistentVolumes(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("vol"), testenv.FreePort(t)
	p := &lines{}
	if err := h.ag.AddVolume(context.Background(), app, store.Volume{Name: "data", Path: "/data"}, false, p); err != nil {
		t.Fatal(err)
	}
	dir := testenv.Bundle(t, "", "VOLUME /cache")
	h.mustDeploy(app, "v1", dir, portParam(port))
	post(t, port, "/file?path=/data/a", "one")
	post(t, port, "/file?path=/cache/b", "two")
	check := func(when string) {
		t.Helper()
		if _, body := get(t, port, "/file?path=/data/a"); body != "one" {
			t.Errorf("%s: /data/a = %q", when, body)
		}
		if _, body := get(t, port, "/file?path=/cache/b"); body != "two" {
			t.Errorf("%s: /cache/b = %q", when, body)
		}
	}
	h.mustDeploy(app, "v2", dir, nil)
	check("after a deploy")
	if _, err := h.client.Rollback(context.Background(), app, api.RollbackRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	check("after a rollback")
	h.restart()
	check("after an agent restart")

	vols, err := h.ag.Volumes(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vols {
		got = append(got, v.Name+" "+v.Path+" "+v.From)
	}
	if strings.Join(got, "; ") != "data /data sprout volumes add; cache /cache image VOLUME" {
		t.Errorf("volumes = %v", got)
	}

	// Removing the app keeps its data; a new deploy finds it again.
	if err := h.ag.RemoveApp(context.Background(), app, false, p); err != nil {
		t.Fatal(err)
	}
	if n := len(testenv.Containers(t, h.ag.ID())); n != 0 {
		t.Errorf("%d containers after apps rm", n)
	}
	if _, err := h.ag.App(app); err == nil {
		t.Error("the app is still known")
	}
	if err := h.ag.AddVolume(context.Background(), app, store.Volume{Name: "data", Path: "/data"}, false, p); err != nil {
		t.Fatal(err)
	}
	h.mustDeploy(app, "v1", dir, portParam(port))
	check("after apps rm and a new deploy")

	if err := h.ag.RemoveApp(context.Background(), app, true, p); err != nil {
		t.Fatal(err)
	}
	prefix := "sprout-" + h.ag.ID() + "-" + app + "--"
	for _, name := range []string{prefix + "data", prefix + "cache"} {
		if exec.Command("docker", "volume", "inspect", name).Run() == nil {
			t.Errorf("volume %s survived apps rm --purge", name)
		}
	}
	if !strings.Contains(strings.Join(p.lines, "\n"), "deleted volume "+prefix+"data") {
		t.Errorf("purge said:\n%s", strings.Join(p.lines, "\n"))
	}
}

// TestCommandOptions honours aws:elasticbeanstalk:command: IgnoreHealthCheck
// swaps in a version whose check still fails at the deadline, and Timeout
// fails a deploy that takes longer.
func TestCommandOptions(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("cmdopt"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), portParam(port))

	ignore := writeFiles(t, testenv.Bundle(t, "", "ENV APP_HEALTH=500"), map[string]string{
		".ebextensions/cmd.config": "option_settings:\n  aws:elasticbeanstalk:command:\n    IgnoreHealthCheck: true\n  aws:elasticbeanstalk:application:\n    Application Healthcheck URL: /healthz\n",
	})
	_, lines, err := h.deploy(app, "v2", ignore, map[string]string{"health_deadline": "1s"})
	out := strings.Join(lines, "\n")
	if err != nil || !strings.Contains(out, "swapping v2 in anyway because IgnoreHealthCheck is true") {
		t.Errorf("IgnoreHealthCheck: %v\n%s", err, out)
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("GET = %q", body)
	}

	slow := writeFiles(t, testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=30s"), map[string]string{
		".ebextensions/cmd.config": "option_settings:\n  aws:elasticbeanstalk:command:\n    Timeout: 2\n",
	})
	start := time.Now()
	_, _, err = h.deploy(app, "v3", slow, map[string]string{"health_deadline": "60s"})
	if err == nil || !strings.Contains(err.Error(), "ran past its Timeout of 2s") || time.Since(start) > 20*time.Second {
		t.Errorf("Timeout: %v after %s", err, time.Since(start))
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("after the timed-out deploy GET = %q", body)
	}
}

type lines struct{ lines []string }

func (l *lines) Step(string)      {}
func (l *lines) Line(text string) { l.lines = append(l.lines, text) }

func post(t *testing.T, port int, path, body string) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", port, path), "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %s", path, resp.Status)
	}
}

// TestProxyServerNone publishes the container's port straight on the
// app's port, without the proxy, as ProxyServer none does on Elastic
// Beanstalk: deploys then stop the old container first. A failed one
// starts the old container again, and the app can go back to the proxy
// and to a direct version by rollback, across an agent restart.
func TestProxyServerNone(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, port := testenv.Name("direct"), testenv.FreePort(t)
	none := ".ebextensions/proxy.config"
	noneBody := "option_settings:\n  aws:elasticbeanstalk:environment:proxy:\n    ProxyServer: none\n"
	published := func() string {
		t.Helper()
		a, err := h.ag.App(app)
		if err != nil {
			t.Fatal(err)
		}
		_, _, _, hostIP, _, _ := inspect(t, a.ContainerID)
		out, _ := exec.Command("docker", "port", a.ContainerID).Output()
		return hostIP + " " + strings.TrimSpace(string(out))
	}
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), portParam(port))

	_, lines, err := h.deploy(app, "v2", writeFiles(t, testenv.Bundle(t, ""), map[string]string{none: noneBody}), nil)
	out := strings.Join(lines, "\n")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"deploys then have downtime", "port " + strconv.Itoa(port) + " is down until v2 serves", "goes straight to v2's container"} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy output lacks %q:\n%s", want, out)
		}
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("GET = %q", body)
	}
	if got := published(); !strings.HasSuffix(got, fmt.Sprintf("127.0.0.1:%d", port)) {
		t.Errorf("v2 is published as %q, want on port %d", got, port)
	}
	if n := len(testenv.Containers(t, h.ag.ID())); n != 1 {
		t.Errorf("%d containers", n)
	}

	// A direct version that never gets healthy: v2 starts again.
	bad := writeFiles(t, testenv.Bundle(t, "", "ENV APP_HEALTH=500"), map[string]string{none: noneBody + "  aws:elasticbeanstalk:application:\n    Application Healthcheck URL: /healthz\n"})
	if _, _, err := h.deploy(app, "v3", bad, map[string]string{"health_deadline": "1s"}); err == nil {
		t.Fatal("v3 deployed")
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("after the failed direct deploy GET = %q", body)
	}

	// Back to the proxy, then a rollback to the direct v2 across a restart.
	h.mustDeploy(app, "v4", testenv.Bundle(t, ""), nil)
	if _, body := get(t, port, "/"); body != "v4 " {
		t.Errorf("v4 GET = %q", body)
	}
	if got := published(); strings.HasSuffix(got, fmt.Sprintf(":%d", port)) {
		t.Errorf("v4 is published on the app's port (%s); the proxy should have it", got)
	}
	h.restart()
	if _, body := get(t, port, "/"); body != "v4 " {
		t.Errorf("after a restart GET = %q", body)
	}
	if _, err := h.client.Rollback(context.Background(), app, api.RollbackRequest{To: "v2"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("after the rollback GET = %q", body)
	}
	h.restart()
	if _, body := get(t, port, "/"); body != "v2 " {
		t.Errorf("after the rollback and a restart GET = %q", body)
	}
}

// TestImageUpdatePulls runs Dockerrun bundles against a real registry on
// loopback: Image.Update (the default) pulls an image that is not on the
// host, and pulls a newer one pushed under the same tag; Update false
// keeps the local image; with the registry gone, Update falls back to
// the local image and says so.
func TestImageUpdatePulls(t *testing.T) {
	t.Parallel()
	reg := testenv.StartRegistry(t)
	h := newHarness(t)
	app, port := testenv.Name("pull"), testenv.FreePort(t)
	ref := reg.Addr + "/sprout-test/" + app + ":stable"
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", ref).Run() })
	dockerrun := func(update string) string {
		u := ""
		if update != "" {
			u = `, "Update": "` + update + `"`
		}
		return writeFiles(t, t.TempDir(), map[string]string{"Dockerrun.aws.json": `{"AWSEBDockerrunVersion": "1", "Image": {"Name": "` + ref + `"` + u + `}, "Ports": [{"ContainerPort": 8080}]}`})
	}
	// Two images built here and pushed under one tag, one after the other.
	h.mustDeploy(app, "one", testenv.Bundle(t, "", "ENV GREETING=one"), portParam(port))
	h.mustDeploy(app, "two", testenv.Bundle(t, "", "ENV GREETING=two"), nil)
	reg.Push(t, "sprout-"+h.ag.ID()+"/"+app+":one", ref)

	deploy := func(label, update string, want ...string) {
		t.Helper()
		_, lines, err := h.deploy(app, label, dockerrun(update), nil)
		out := strings.Join(lines, "\n")
		if err != nil {
			t.Fatalf("%s: %v\n%s", label, err, out)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", label, w, out)
			}
		}
	}
	deploy("p1", "", "image "+ref+" is not on this host; pulling it", "pulled "+ref)
	if _, body := get(t, port, "/"); body != "p1 one" {
		t.Errorf("p1 GET = %q", body)
	}
	reg.Push(t, "sprout-"+h.ag.ID()+"/"+app+":two", ref)
	deploy("p2", "false", "using the local image "+ref, "Image.Update is false, so it is not pulled")
	if _, body := get(t, port, "/"); body != "p2 one" {
		t.Errorf("p2 (Update false) GET = %q", body)
	}
	deploy("p3", "true", "pulling "+ref+" (Image.Update)", "pulled "+ref)
	if _, body := get(t, port, "/"); body != "p3 two" {
		t.Errorf("p3 (newer image pulled) GET = %q", body)
	}
	reg.Stop()
	deploy("p4", "", "could not pull "+ref, "using the local image")
	if _, body := get(t, port, "/"); body != "p4 two" {
		t.Errorf("p4 (no registry) GET = %q", body)
	}
}

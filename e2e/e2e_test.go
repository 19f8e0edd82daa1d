// Package e2e runs the real sprout binary, agent and CLI, against the real
// Docker engine, as a user does.
package e2e

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// agentProc is a `sprout agent` process.
type agentProc struct {
	t       testing.TB
	bin     string
	env     []string
	dataDir string
	socket  string
	cmd     *exec.Cmd
	log     *testenv.SyncBuffer
	id      string

	metricsAddr string
}

func startAgent(t testing.TB, env ...string) *agentProc {
	t.Helper()
	return startAgentBinary(t, testenv.SproutBinary(t), env...)
}

// startAgentBinary starts the agent from the sprout binary at bin.
func startAgentBinary(t testing.TB, bin string, env ...string) *agentProc {
	t.Helper()
	testenv.Docker(t)
	dir := t.TempDir()
	a := &agentProc{t: t, bin: bin, dataDir: filepath.Join(dir, "data"), socket: filepath.Join(dir, "sprout.sock")}
	a.env = append(os.Environ(),
		"SPROUT_DATA_DIR="+a.dataDir, "SPROUT_SOCKET="+a.socket,
		"SPROUT_HEALTH_INTERVAL=100ms", "SPROUT_DEPLOY_STOP_GRACE=2s", "SPROUT_PROXY_BIND_ADDRESS=127.0.0.1")
	a.metricsAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	a.env = append(a.env, "SPROUT_METRICS_ADDRESS="+a.metricsAddr)
	a.env = append(a.env, env...)
	for _, e := range env {
		if sock, ok := strings.CutPrefix(e, "SPROUT_SOCKET="); ok {
			a.socket = sock
		}
	}
	testenv.CleanupAgent(t, func() string { return a.id })
	a.start()
	t.Cleanup(func() {
		a.kill(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log)
		}
	})
	return a
}

func (a *agentProc) start() {
	a.t.Helper()
	a.log = &testenv.SyncBuffer{}
	a.cmd = exec.Command(a.bin, "agent")
	a.cmd.Env = a.env
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	client := api.NewClient(a.socket)
	testenv.Eventually(a.t, 20*time.Second, func() error {
		info, err := client.Agent(context.Background())
		if err != nil {
			return fmt.Errorf("agent did not answer: %v\n%s", err, a.log)
		}
		a.id = info.ID
		return nil
	})
}

// inFlight reads from the agent's metrics how many of app's requests its
// proxy is serving.
func (a *agentProc) inFlight(app string) (int, error) {
	resp, err := http.Get("http://" + a.metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	prefix := fmt.Sprintf("sprout_proxy_requests_in_flight{app=%q} ", app)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			return int(n), err
		}
	}
	return 0, nil
}

// kill signals the agent and waits until it is gone: the process the
// test started, and, after an upgrade, the process that serves now (which
// is not the test's child), as the agent's PID says.
func (a *agentProc) kill(sig syscall.Signal) {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	info, err := api.NewClient(a.socket).Agent(ctx)
	cancel()
	if err == nil && info.PID != a.cmd.Process.Pid {
		syscall.Kill(info.PID, sig)
		waitGone(info.PID, 30*time.Second)
	}
	a.cmd.Process.Signal(sig)
	// The output pipe is shared with the processes an upgrade started.
	a.cmd.WaitDelay = 10 * time.Second
	a.cmd.Wait()
	a.cmd = nil
}

// waitGone waits until no process pid runs, at most d.
func waitGone(pid int, d time.Duration) {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
			return // a zombie: gone, waiting for its parent to reap it
		}
	}
}

// sprout runs the CLI against the agent and returns its output and exit code.
func (a *agentProc) sprout(args ...string) (string, string, int) {
	a.t.Helper()
	cmd := exec.Command(a.bin, args...)
	cmd.Env = a.env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		a.t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// background runs a CLI command that does not end by itself (--follow)
// until the test ends, and returns its output as it comes.
func (a *agentProc) background(args ...string) io.Reader {
	a.t.Helper()
	cmd := exec.Command(a.bin, args...)
	cmd.Env = a.env
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	// Closing the reader first unblocks a pending write, so Wait returns.
	a.t.Cleanup(func() { pr.Close(); cmd.Process.Kill(); cmd.Wait() })
	return pr
}

func (a *agentProc) mustSprout(args ...string) string {
	a.t.Helper()
	out, errOut, code := a.sprout(args...)
	if code != 0 {
		a.t.Fatalf("sprout %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func get(t *testing.T, port int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// zipDir writes dir as a zip wrapped in one top-level folder, as
// `zip -r app.zip app/` does.
func zipDir(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "app.zip")
	f, _ := os.Create(out)
	zw := zip.NewWriter(f)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		h, _ := zip.FileInfoHeader(info)
		h.Name, h.Method = "app/"+e.Name(), zip.Deflate
		w, _ := zw.CreateHeader(h)
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		w.Write(b)
	}
	zw.Close()
	f.Close()
	return out
}

func TestCLI(t *testing.T) {
	a := startAgent(t)
	port := testenv.FreePort(t)
	app := testenv.Name("cli")
	dir := testenv.Bundle(t, "")

	out := a.mustSprout("deploy", zipDir(t, dir), "--app", app, "--label", "v1", "--port", fmt.Sprint(port), "--health-path", "/healthz")
	for _, want := range []string{"==> unpack", "==> build", "==> health", "==> swap", app + " v1 is serving on port " + fmt.Sprint(port)} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy output lacks %q:\n%s", want, out)
		}
	}
	// The first check may find the app not yet listening; some check passes.
	if !regexp.MustCompile(`check \d+ passed`).MatchString(out) {
		t.Errorf("deploy output shows no passing health check:\n%s", out)
	}
	if body := get(t, port); body != "v1 " {
		t.Errorf("GET = %q", body)
	}
	// A directory bundle, no --label: the label is v<N>.
	out = a.mustSprout("deploy", dir, "--app", app)
	if !strings.Contains(out, app+" v2 is serving") {
		t.Errorf("second deploy:\n%s", out)
	}

	// A crashing version: exit 1, the reason, and what keeps serving.
	bad := testenv.Bundle(t, "", "ENV APP_CRASH=1")
	stdout, stderr, code := a.sprout("deploy", bad, "--app", app, "--label", "bad")
	if code != 1 || !strings.Contains(stderr, "exited with code 3") || !strings.Contains(stderr, "crashing on purpose") || !strings.Contains(stderr, "v2 keeps serving on port") {
		t.Errorf("failed deploy: exit %d\n%s\n%s", code, stdout, stderr)
	}

	status := a.mustSprout("status", "--app", app, "--json")
	var st []api.AppStatus
	if err := json.Unmarshal([]byte(status), &st); err != nil || len(st) != 1 || st[0].Serving != "v2" || st[0].Port != port {
		t.Errorf("status --json = %s (%v)", status, err)
	}
	if out := a.mustSprout("apps"); !strings.Contains(out, app) || !strings.Contains(out, "v2") {
		t.Errorf("apps:\n%s", out)
	}
	versions := a.mustSprout("versions", "--app", app)
	for _, want := range []string{"* v2", "serving", "bad", "failed at health", "v1", "retired"} {
		if !strings.Contains(versions, want) {
			t.Errorf("versions lacks %q:\n%s", want, versions)
		}
	}

	a.mustSprout("setenv", "--app", app, "GREETING=hey", "DB_PASSWORD=hunter2")
	if body := get(t, port); body != "v2 hey" {
		t.Errorf("after setenv GET = %q", body)
	}
	if env := a.mustSprout("printenv", "--app", app); strings.Contains(env, "hunter2") || !strings.Contains(env, "GREETING=hey") {
		t.Errorf("printenv:\n%s", env)
	}
	if env := a.mustSprout("printenv", "--app", app, "--show-secrets"); !strings.Contains(env, "DB_PASSWORD=hunter2") {
		t.Errorf("printenv --show-secrets:\n%s", env)
	}
	if _, stderr, code := a.sprout("setenv", "--app", app, "NOEQUALS"); code == 0 || !strings.Contains(stderr, "KEY=value") {
		t.Errorf("bad setenv: %d %s", code, stderr)
	}

	out = a.mustSprout("rollback", "--app", app)
	if !strings.Contains(out, app+" v1 is serving") || get(t, port) != "v1 hey" {
		t.Errorf("rollback:\n%s", out)
	}
	if events := a.mustSprout("events", "--app", app); !strings.Contains(events, "rolled back to v1") || !strings.Contains(events, "deploy of bad failed at health") {
		t.Errorf("events:\n%s", events)
	}

	// The socket is owner-only.
	if fi, err := os.Stat(a.socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, %v", fi.Mode(), err)
	}
}

func TestCLIErrors(t *testing.T) {
	bin := testenv.SproutBinary(t)
	run := func(env []string, args ...string) (string, int) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	dir := t.TempDir()
	out, code := run([]string{"SPROUT_DATA_DIR=" + dir, "SPROUT_SOCKET=" + dir + "/s.sock", "SPROUT_HEALTH_INTERVAL=soon"}, "agent")
	if code == 0 || !strings.Contains(out, "health.interval") || !strings.Contains(out, `"soon"`) {
		t.Errorf("bad config: exit %d: %s", code, out)
	}
	out, code = run([]string{"SPROUT_SOCKET=" + dir + "/none.sock"}, "apps")
	if code == 0 || !strings.Contains(out, "no sprout agent answers") || !strings.Contains(out, "sprout agent") {
		t.Errorf("no agent: exit %d: %s", code, out)
	}
	out, code = run(nil, "deploy", filepath.Join(dir, "missing.zip"))
	if code == 0 || !strings.Contains(out, "missing.zip") {
		t.Errorf("missing bundle: exit %d: %s", code, out)
	}
}

// TestSIGKILLMidDeploy kills the agent while a new version waits for its
// health check, starts it again, and expects the old version serving and
// nothing left of the new one.
func TestSIGKILLMidDeploy(t *testing.T) {
	a := startAgent(t)
	port := testenv.FreePort(t)
	app := testenv.Name("kill")
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port))

	cli := a.killDuringHealth(func() {
		if n := len(testenv.Containers(t, a.id)); n != 2 {
			t.Fatalf("%d containers during the deploy, want 2", n)
		}
	}, testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=60s"), "--app", app, "--label", "v2")
	if cli.ExitCode() == 0 {
		t.Error("the CLI exited 0 although the agent died mid-deploy")
	}
	a.start()

	if body := get(t, port); body != "v1 " {
		t.Errorf("after restart GET = %q, want v1", body)
	}
	if n := len(testenv.Containers(t, a.id)); n != 1 {
		t.Errorf("%d containers after restart, want only v1's", n)
	}
	if out, _ := exec.Command("docker", "images", "-q", "sprout-"+a.id+"/"+app+":v2").Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("the interrupted version's image tag is still there")
	}
	versions := a.mustSprout("versions", "--app", app)
	if !strings.Contains(versions, "* v1") || !strings.Contains(versions, "interrupted") {
		t.Errorf("versions after restart:\n%s", versions)
	}
	// And the app deploys normally afterwards.
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v3")
	if body := get(t, port); body != "v3 " {
		t.Errorf("after the next deploy GET = %q", body)
	}
}

// TestSIGKILLMidDirectDeploy kills the agent while a ProxyServer none
// version waits for its health check, after the serving container was
// stopped to free the port. On start the agent replays the rollout's
// journal: the new container goes, and the very container that served
// before runs and serves again (not a new one made from its image).
func TestSIGKILLMidDirectDeploy(t *testing.T) {
	a := startAgent(t)
	port := testenv.FreePort(t)
	app := testenv.Name("killnone")
	direct := func(extra ...string) string {
		dir := testenv.Bundle(t, "", extra...)
		if err := os.MkdirAll(filepath.Join(dir, ".ebextensions"), 0o755); err != nil {
			t.Fatal(err)
		}
		body := "option_settings:\n  aws:elasticbeanstalk:environment:proxy:\n    ProxyServer: none\n"
		if err := os.WriteFile(filepath.Join(dir, ".ebextensions", "proxy.config"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	a.mustSprout("deploy", direct(), "--app", app, "--label", "v1", "--port", fmt.Sprint(port))
	before := testenv.Containers(t, a.id)
	if len(before) != 1 {
		t.Fatalf("%d containers after v1, want 1", len(before))
	}

	a.killDuringHealth(nil, direct("ENV APP_BOOT_DELAY=60s"), "--app", app, "--label", "v2")
	a.start()

	if body := get(t, port); body != "v1 " {
		t.Errorf("after restart GET = %q, want v1", body)
	}
	if after := testenv.Containers(t, a.id); len(after) != 1 || after[0] != before[0] {
		t.Errorf("containers after restart = %v, want v1's own %v", after, before)
	}
	if events := a.mustSprout("events", "--app", app); !strings.Contains(events, "undoing the deploy of v2") || !strings.Contains(events, "started v1 again") {
		t.Errorf("events do not tell the undo:\n%s", events)
	}
}

// TestSIGKILLMidRollingDeploy kills the agent in the middle of a rolling
// deploy of four instances, once batch 1 has stopped an old instance and
// waits for a new one. On start the journal is replayed: the new
// container goes, the stopped one runs again, and all four instances are
// the old version's own containers, none removed as an orphan.
func TestSIGKILLMidRollingDeploy(t *testing.T) {
	a := startAgent(t)
	port := testenv.FreePort(t)
	app := testenv.Name("killroll")
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port), "--instances", "4")
	instances := func() []string {
		var st []api.AppStatus
		if err := json.Unmarshal([]byte(a.mustSprout("status", "--app", app, "--json")), &st); err != nil || len(st) != 1 {
			t.Fatalf("status --json: %v", err)
		}
		var ids []string
		for _, in := range st[0].Instances {
			if in.Label != "v1" || in.State != "running" || !in.Routed {
				t.Errorf("instance %+v, want a running, routed v1", in)
			}
			ids = append(ids, in.ContainerID)
		}
		slices.Sort(ids)
		return ids
	}
	before := instances()
	if len(before) != 4 {
		t.Fatalf("%d instances, want 4", len(before))
	}
	a.killDuringHealth(func() {
		if n := len(testenv.Containers(t, a.id)); n != 5 {
			t.Errorf("%d containers in batch 1, want the 4 old ones (one stopped) and a new one", n)
		}
	}, testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=60s"), "--app", app, "--label", "v2", "--policy", "Rolling", "--batch-size", "1", "--batch-size-type", "Fixed")
	a.start()
	if after := instances(); !slices.Equal(after, before) {
		t.Errorf("instances after the restart = %v, want v1's own %v", after, before)
	}
	if n := len(testenv.Containers(t, a.id)); n != 4 {
		t.Errorf("%d containers after the restart, want 4", n)
	}
	if body := get(t, port); body != "v1 " {
		t.Errorf("GET after the restart = %q", body)
	}
}

// killDuringHealth deploys dir with args and, once the deploy waits for
// the new version's health check, runs during (when not nil) and kills the
// agent with SIGKILL. It returns how the CLI exited.
func (a *agentProc) killDuringHealth(during func(), dir string, args ...string) *os.ProcessState {
	t := a.t
	t.Helper()
	cmd := exec.Command(a.bin, append([]string{"deploy", dir}, args...)...)
	cmd.Env = a.env
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, pr, "==> health")
	go io.Copy(io.Discard, pr)
	if during != nil {
		during()
	}
	a.kill(syscall.SIGKILL)
	cmd.Wait()
	pw.Close()
	return cmd.ProcessState
}

func waitFor(t testing.TB, r io.Reader, s string) {
	t.Helper()
	found := make(chan struct{})
	var buf bytes.Buffer
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			buf.Write(b[:n])
			if strings.Contains(buf.String(), s) {
				close(found)
				return
			}
			if err != nil {
				return
			}
		}
	}()
	select {
	case <-found:
	case <-time.After(60 * time.Second):
		t.Fatalf("no %q in the output:\n%s", s, buf.String())
	}
}

// TestLogs reads the serving version's output, follows it, and reads the
// output of a version whose container is gone.
func TestLogs(t *testing.T) {
	a := startAgent(t)
	app, port := testenv.Name("logs"), testenv.FreePort(t)
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port))
	if out := a.mustSprout("logs", "--app", app); !strings.Contains(out, "v1 listening on :8080") {
		t.Errorf("logs of the serving version:\n%s", out)
	}
	// A crashing version's output stays readable after its container is removed.
	a.sprout("deploy", testenv.Bundle(t, "", "ENV APP_CRASH=1"), "--app", app, "--label", "bad")
	if out := a.mustSprout("logs", "--app", app, "--label", "bad"); !strings.Contains(out, "crashing on purpose") {
		t.Errorf("logs of the failed version:\n%s", out)
	}
	// So does v1's once v2 replaced it; v1 handled SIGTERM.
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v2")
	if out := a.mustSprout("logs", "--app", app, "--label", "v1"); !strings.Contains(out, "v1 listening") || !strings.Contains(out, "SIGTERM: draining") {
		t.Errorf("logs of the retired version:\n%s", out)
	}
	if out := a.mustSprout("logs", "--app", app, "--label", "v1", "--since", "1s"); strings.Contains(out, "v1 listening") {
		t.Errorf("--since 1s still shows old lines:\n%s", out)
	}
	if _, stderr, code := a.sprout("logs", "--app", app, "--label", "v1", "--follow"); code == 0 || !strings.Contains(stderr, "cannot be followed") {
		t.Errorf("--follow of a removed container: %d %s", code, stderr)
	}
	// --follow on the serving version prints new lines as they come.
	waitFor(t, a.background("logs", "--app", app, "--follow", "--tail", "1"), "v2 listening")
}

// TestDeployHistory reads a version's deploy output back, and follows
// events while a deploy happens.
func TestDeployHistory(t *testing.T) {
	a := startAgent(t)
	app, port := testenv.Name("hist"), testenv.FreePort(t)

	pr := a.background("events", "--app", app, "--follow")

	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port))
	waitFor(t, pr, "v1 is serving on port")
	go io.Copy(io.Discard, pr)

	a.sprout("deploy", testenv.Bundle(t, "FROM scratch\nCOPY nothing-here /x\nEXPOSE 8080\n"), "--app", app, "--label", "broken")
	for label, want := range map[string][]string{
		"v1":     {"==> build", "Step 1/", "==> health", "check 1", "serving"},
		"broken": {"==> build", "COPY nothing-here", "deploy failed"},
	} {
		out := a.mustSprout("versions", "--app", app, "--label", label, "--build-log")
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("deploy log of %s lacks %q:\n%s", label, w, out)
			}
		}
	}
}

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// Deploys outlive their client: the CLI that started one may be
// interrupted, killed or cut off, and the agent carries it to its end;
// only `sprout abort` stops it.

// TestDeployOutlivesItsCLI interrupts a deploy's CLI with Ctrl-C, then
// kills the next one's with SIGKILL, each while its new version waits for
// its health check: each deploy finishes and serves, status shows it in
// flight at its step meanwhile, versions record no cancellation, and a
// client that never retries sees no failed request.
func TestDeployOutlivesItsCLI(t *testing.T) {
	a := startAgent(t)
	app, port := testenv.Name("outlive"), testenv.FreePort(t)
	load := a.v1UnderLoad(app, port)
	slow := testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=4s")

	// Ctrl-C: the CLI stops following, says how to watch and stop, 130.
	cmd, out := a.startDeploy(slow, "--app", app, "--label", "v2")
	waitFor(t, out, "==> health")
	go io.Copy(io.Discard, out)
	cmd.Process.Signal(os.Interrupt)
	code, stderr := waitExit(t, cmd)
	t.Logf("the interrupted CLI said:\n%s", stderr)
	if code != 130 {
		t.Errorf("the interrupted CLI exited %d, want 130\n%s", code, stderr)
	}
	for _, want := range []string{"stopped following: the deploy of " + app + " v2 goes on on the agent (at health)", "sprout events --app " + app + " --follow", "sprout abort --app " + app} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the interrupted CLI does not say %q:\n%s", want, stderr)
		}
	}
	st := a.status(app)
	if len(st.InFlight) != 1 || st.InFlight[0].Label != "v2" || st.InFlight[0].Step != "health" {
		t.Errorf("in flight after Ctrl-C: %+v, want the deploy of v2 at health", st.InFlight)
	}
	text := a.mustSprout("status", "--app", app)
	t.Logf("status:\n%s", text)
	if !strings.Contains(text, "in flight:") || !strings.Contains(text, "deploy of v2, at health since") {
		t.Errorf("status does not show the deploy in flight:\n%s", text)
	}
	a.servesWhenDone(app, load, "v2 ")

	// SIGKILL: nothing of the CLI is left to say anything.
	cmd, out = a.startDeploy(slow, "--app", app, "--label", "v3")
	waitFor(t, out, "==> health")
	go io.Copy(io.Discard, out)
	cmd.Process.Kill()
	waitExit(t, cmd)
	a.servesWhenDone(app, load, "v3 ")

	stopLoad(t, load, "deploys whose CLI went away")
	versions := a.mustSprout("versions", "--app", app)
	if strings.Contains(versions, "cancel") || strings.Contains(versions, "failed") || !strings.Contains(versions, "* v3") {
		t.Errorf("versions:\n%s", versions)
	}
}

// TestDeployOutlivesItsSSHSession cuts the ssh connection of a deploy run
// with --host ssh:// (its ssh client is killed) while the new version
// waits for its health check: the CLI says that it lost the connection
// and that the deploy goes on, with commands to watch and stop it that
// name the host; the deploy finishes and serves, and no request fails.
func TestDeployOutlivesItsSSHSession(t *testing.T) {
	sshd := testenv.SSHServer(t)
	pub := publicDir(t)
	bin := filepath.Join(pub, "bin")
	install(t, testenv.SproutBinary(t), filepath.Join(bin, "sprout"))
	a := startAgent(t, "SPROUT_SOCKET="+filepath.Join(pub, "sprout.sock"))
	key := sshd.Key(t, sessionEnv("PATH", bin+":/usr/bin:/bin"), sessionEnv("SPROUT_SOCKET", a.socket))
	remote := a.over(sshd, key)
	app, port := testenv.Name("outssh"), testenv.FreePort(t)
	load := remote.v1UnderLoad(app, port)

	cmd, out := remote.startDeploy(testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=4s"), "--app", app, "--label", "v2")
	waitFor(t, out, "==> health")
	go io.Copy(io.Discard, out)
	ssh := childNamed(t, cmd.Process.Pid, "ssh")
	if err := syscall.Kill(ssh, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	code, stderr := waitExit(t, cmd)
	t.Logf("the CLI whose session was cut said:\n%s", stderr)
	if code != 1 {
		t.Errorf("the CLI whose session was cut exited %d, want 1\n%s", code, stderr)
	}
	for _, want := range []string{"the deploy of " + app + " v2 goes on on the agent (at health), but this CLI lost its connection to it", "sprout abort --app " + app + " --host " + sshd.URL()} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the CLI does not say %q:\n%s", want, stderr)
		}
	}
	a.servesWhenDone(app, load, "v2 ")
	stopLoad(t, load, "a deploy whose ssh session was cut")
	testenv.Eventually(t, 10*time.Second, func() error { return noDialStdio(filepath.Join(bin, "sprout")) })
}

// TestDetachThenAbort: --detach returns as soon as the agent accepted the
// deploy; `sprout abort` then stops it, the old version serves on, status
// shows nothing in flight and versions records the deploy as aborted.
func TestDetachThenAbort(t *testing.T) {
	a := startAgent(t)
	app, port := testenv.Name("detach"), testenv.FreePort(t)
	load := a.v1UnderLoad(app, port)

	out := a.mustSprout("deploy", testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=60s"), "--app", app, "--label", "v2", "--detach")
	t.Logf("deploy --detach said:\n%s", out)
	for _, want := range []string{"accepted: the deploy of " + app + " v2 runs on the agent", "sprout events --app " + app + " --follow", "sprout abort --app " + app} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy --detach does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "is serving") {
		t.Errorf("deploy --detach waited for the deploy:\n%s", out)
	}
	if st := a.status(app); len(st.InFlight) != 1 || st.InFlight[0].Kind != "deploy" || st.InFlight[0].Label != "v2" {
		t.Errorf("in flight after --detach: %+v", st.InFlight)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if st := a.status(app); len(st.InFlight) != 1 || st.InFlight[0].Step != "health" {
			return fmt.Errorf("in flight: %+v, want the deploy at health", st.InFlight)
		}
		return nil
	})

	if out := a.mustSprout("abort", "--app", app); !strings.Contains(out, "aborted the deploy of "+app+": v1 serves") {
		t.Errorf("abort:\n%s", out)
	}
	st := a.status(app)
	if len(st.InFlight) != 0 || st.Serving != "v1" {
		t.Errorf("after the abort: serving %s, in flight %+v", st.Serving, st.InFlight)
	}
	testenv.Answered(t, load, "v1 ", 50)
	stopLoad(t, load, "a detached deploy and its abort")
	if body := get(t, port); body != "v1 " {
		t.Errorf("GET after the abort = %q", body)
	}
	if versions := a.mustSprout("versions", "--app", app); !strings.Contains(versions, "aborted") || !strings.Contains(versions, "* v1") {
		t.Errorf("versions after the abort:\n%s", versions)
	}
}

// TestAbortCancelsTheQueued: behind a detached deploy that waits for its
// health check, a deploy of v3 whose CLI follows it and a rollback
// detached while queued, whose hint says that abort stops the deploy
// ahead too. `sprout abort` stops the first and cancels both, saying each;
// the CLI of v3 fails with the abort's reason and exits 1, versions record
// v3 as cancelled, v1 serves on, and a client that never retries sees no
// failed request.
func TestAbortCancelsTheQueued(t *testing.T) {
	a := startAgent(t)
	app, port := testenv.Name("abortq"), testenv.FreePort(t)
	load := a.v1UnderLoad(app, port)
	a.mustSprout("deploy", testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=60s"), "--app", app, "--label", "v2", "--detach")
	testenv.Eventually(t, 30*time.Second, func() error {
		if st := a.status(app); len(st.InFlight) != 1 || st.InFlight[0].Step != "health" {
			return fmt.Errorf("in flight: %+v, want the deploy at health", st.InFlight)
		}
		return nil
	})
	v3, out := a.startDeploy(testenv.Bundle(t, ""), "--app", app, "--label", "v3")
	waitFor(t, out, "waiting for it to finish")
	go io.Copy(io.Discard, out)
	detached := a.mustSprout("rollback", "--app", app, "--to", "v1", "--detach")
	t.Logf("rollback --detach said:\n%s", detached)
	if !strings.Contains(detached, "is queued behind the operation in flight") || !strings.Contains(detached, "this also stops the operation running ahead of it") {
		t.Errorf("the queued rollback does not say that abort stops the deploy ahead:\n%s", detached)
	}

	aborted := a.mustSprout("abort", "--app", app)
	t.Logf("abort said:\n%s", aborted)
	for _, want := range []string{"aborted the deploy of " + app + ": v1 serves", "cancelled the queued deploy of v3 (started by ", "cancelled the queued rollback to v1 (started by "} {
		if !strings.Contains(aborted, want) {
			t.Errorf("abort does not say %q:\n%s", want, aborted)
		}
	}
	code, stderr := waitExit(t, v3)
	t.Logf("the CLI of v3 said:\n%s", stderr)
	if code != 1 || !strings.Contains(stderr, "deploy of "+app+" failed: cancelled by `sprout abort` while it was queued (by ") || !strings.Contains(stderr, "v1 keeps serving") {
		t.Errorf("the CLI of the cancelled deploy exited %d:\n%s", code, stderr)
	}
	if st := a.status(app); len(st.InFlight) != 0 || st.Serving != "v1" {
		t.Errorf("after the abort: serving %s, in flight %+v", st.Serving, st.InFlight)
	}
	testenv.Answered(t, load, "v1 ", 50)
	stopLoad(t, load, "an abort of a deploy with two operations queued")
	versions := a.mustSprout("versions", "--app", app)
	t.Logf("versions:\n%s", versions)
	if !regexp.MustCompile(`(?m)^  v3 +failed .*cancelled by `+"`sprout abort`"+` while it was queued`).MatchString(versions) || !strings.Contains(versions, "* v1") {
		t.Errorf("versions after the abort:\n%s", versions)
	}
}

// v1UnderLoad deploys v1 of app on port, with a health check path, and
// starts a load on it that never retries.
func (a *agentProc) v1UnderLoad(app string, port int) *loadgen.Load {
	t := a.t
	t.Helper()
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port), "--health-path", "/healthz")
	load := testenv.Load(t, port, 4)
	testenv.Answered(t, load, "v1 ", 50)
	return load
}

// startDeploy starts `sprout deploy dir args...` and returns it with its
// output.
func (a *agentProc) startDeploy(dir string, args ...string) (*exec.Cmd, io.Reader) {
	t := a.t
	t.Helper()
	cmd := exec.Command(a.bin, append([]string{"deploy", dir}, args...)...)
	cmd.Env = a.env
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = &bytes.Buffer{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		pw.Close()
	})
	return cmd, pr
}

// waitExit waits for a started CLI to end and returns its exit status and
// standard error.
func waitExit(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the CLI did not end within 20s")
	}
	return cmd.ProcessState.ExitCode(), cmd.Stderr.(*bytes.Buffer).String()
}

// status is `sprout status --app app --json`.
func (a *agentProc) status(app string) api.AppStatus {
	a.t.Helper()
	var st []api.AppStatus
	out := a.mustSprout("status", "--app", app, "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
		a.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st[0]
}

// servesWhenDone waits until nothing of app is in flight and load's
// requests get body.
func (a *agentProc) servesWhenDone(app string, load *loadgen.Load, body string) {
	t := a.t
	t.Helper()
	testenv.Eventually(t, time.Minute, func() error {
		if st := a.status(app); len(st.InFlight) > 0 {
			return fmt.Errorf("still in flight: %+v", st.InFlight)
		}
		return nil
	})
	testenv.Answered(t, load, body, 50)
}

// stopLoad stops load and fails the test if any request failed.
func stopLoad(t *testing.T, load *loadgen.Load, during string) {
	t.Helper()
	r := load.Stop()
	t.Logf("load during %s: %s", during, r)
	if r.Failed != 0 {
		t.Errorf("%d requests failed during %s: %s", r.Failed, during, r)
	}
}

// childNamed finds the child process of pid whose command is name.
func childNamed(t *testing.T, pid int, name string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if s[open+1:end] != name || len(fields) < 2 || fields[1] != strconv.Itoa(pid) {
			continue
		}
		child, _ := strconv.Atoi(strings.TrimSpace(s[:open]))
		return child
	}
	t.Fatalf("process %d has no child %s", pid, name)
	return 0
}

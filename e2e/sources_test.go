package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/source"
	"github.com/sprout-paas/sprout/store"
)

func s3Env(fake *testenv.FakeS3) []string {
	return []string{"SPROUT_S3_ENDPOINT=" + fake.URL, "SPROUT_S3_PATH_STYLE=true"}
}

func packed(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := bundle.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func versionsOf(t *testing.T, a *agentProc, app string) map[string]store.Version {
	t.Helper()
	var vs []store.Version
	if err := json.Unmarshal([]byte(a.mustSprout("versions", "--app", app, "--json")), &vs); err != nil {
		t.Fatal(err)
	}
	out := map[string]store.Version{}
	for _, v := range vs {
		out[v.Label] = v
	}
	return out
}

// TestS3Bundles deploys bundles the agent fetches from S3 itself (a real
// SDK client against a real S3 wire protocol on loopback), uploads a
// local bundle as an application version that is never overwritten, and
// fails cleanly, before anything stops, on a missing object, a denied
// bucket and a bucket in another region.
func TestS3Bundles(t *testing.T) {
	fake := testenv.S3(t, "bundles")
	a := startAgent(t, s3Env(fake)...)
	app, port := testenv.Name("s3"), testenv.FreePort(t)
	fake.Put(t, "bundles", "web/v1.tar.gz", packed(t, testenv.Bundle(t, "")))

	out := a.mustSprout("deploy", "s3://bundles/web/v1.tar.gz", "--app", app, "--label", "v1", "--port", fmt.Sprint(port))
	if !strings.Contains(out, "==> fetch") || !strings.Contains(out, "fetched s3://bundles/web/v1.tar.gz") {
		t.Errorf("deploy output:\n%s", out)
	}
	if body := get(t, port); body != "v1 " {
		t.Errorf("GET = %q", body)
	}
	v1 := versionsOf(t, a, app)["v1"]
	if v1.Source != "s3://bundles/web/v1.tar.gz" || v1.ETag == "" || len(v1.SHA256) != 64 {
		t.Errorf("v1 record: %+v", v1)
	}

	dir := testenv.Bundle(t, "", "ENV GREETING=two")
	out = a.mustSprout("deploy", dir, "--app", app, "--label", "v2", "--s3", "s3://bundles/versions/")
	key := "versions/" + app + "/v2.tar.gz"
	if _, ok := fake.Get(t, "bundles", key); !ok || !strings.Contains(out, "uploaded application version s3://bundles/"+key) {
		t.Errorf("upload: %s", out)
	}
	if body := get(t, port); body != "v2 two" {
		t.Errorf("GET = %q", body)
	}
	if _, errOut, code := a.sprout("deploy", dir, "--app", app, "--label", "v2", "--s3", "s3://bundles/versions/"); code == 0 || !strings.Contains(errOut, "s3://bundles/"+key+" already exists; application versions are never overwritten") {
		t.Errorf("second upload of v2: exit %d %s", code, errOut)
	}

	for ref, want := range map[string]string{
		"s3://bundles/web/v9.tar.gz": "no such object in bucket bundles",
		"s3://denied/web.zip":        "s3://denied/web.zip: access denied",
		"s3://elsewhere/web.zip":     "bucket elsewhere is in another region than us-east-1",
		"s3://bundles/":              "names no object",
	} {
		_, errOut, code := a.sprout("deploy", ref, "--app", app)
		if code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "v2 keeps serving") {
			t.Errorf("%s: exit %d:\n%s", ref, code, errOut)
		}
	}
	if body := get(t, port); body != "v2 two" {
		t.Errorf("after the failed fetches GET = %q", body)
	}
	for _, v := range versionsOf(t, a, app) {
		if v.Status == store.StatusFailed && v.FailedStep != "fetch" {
			t.Errorf("%s failed at %q, want fetch", v.Label, v.FailedStep)
		}
	}
}

// gitRepo makes a repository holding the test app's bundle, with git's
// identity set for commits.
type gitRepo struct {
	t   *testing.T
	dir string
}

func newGitRepo(t *testing.T) *gitRepo {
	r := &gitRepo{t: t, dir: testenv.Bundle(t, "")}
	r.git("init", "-q", "-b", "main")
	r.commit("v1")
	return r
}

func (r *gitRepo) git(args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=dev", "GIT_AUTHOR_EMAIL=dev@example.com", "GIT_COMMITTER_NAME=dev", "GIT_COMMITTER_EMAIL=dev@example.com", "GIT_TERMINAL_PROMPT=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (r *gitRepo) must(args ...string) string {
	r.t.Helper()
	out, err := r.git(args...)
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(out)
}

// commit changes the app's GREETING (or crashes it) and commits.
func (r *gitRepo) commit(msg string, extra ...string) string {
	r.t.Helper()
	df := testenv.DefaultDockerfile + "ENV GREETING=" + msg + "\n" + strings.Join(extra, "\n") + "\n"
	os.WriteFile(filepath.Join(r.dir, "Dockerfile"), []byte(df), 0o644)
	r.must("add", "-A")
	r.must("commit", "-qm", msg)
	return r.must("rev-parse", "HEAD")
}

// TestGitDeploys deploys a commit the agent clones itself, then runs git
// push deploys through the agent's git server with the real git client:
// push v1, push v2 under load with 0 failed requests, push a broken
// commit and see it rejected while v2 keeps serving. The token never
// shows in the agent's log, events, versions or status.
func TestGitDeploys(t *testing.T) {
	token := "tok-" + testenv.Name("s3cr3t")
	gitPort := testenv.FreePort(t)
	a := startAgent(t, fmt.Sprintf("SPROUT_GIT_ADDRESS=127.0.0.1:%d", gitPort), "SPROUT_GIT_TOKEN="+token)
	repo := newGitRepo(t)
	app, port := testenv.Name("push"), testenv.FreePort(t)

	// The agent clones a ref itself.
	first := repo.must("rev-parse", "HEAD")
	out := a.mustSprout("deploy", "--git", "file://"+repo.dir, "--ref", "main", "--app", app+"-clone", "--port", fmt.Sprint(testenv.FreePort(t)))
	if !strings.Contains(out, "fetched commit "+first) {
		t.Errorf("clone deploy:\n%s", out)
	}
	if v := versionsOf(t, a, app+"-clone")["v1"]; v.Commit != first || v.Source != "file://"+repo.dir+"#main" {
		t.Errorf("clone record: %+v", v)
	}

	// git push deploys. A wrong token is refused.
	remote := fmt.Sprintf("http://deploy:%s@127.0.0.1:%d/%s.git", token, gitPort, app)
	repo.must("remote", "add", "bad", fmt.Sprintf("http://deploy:wrong@127.0.0.1:%d/%s.git", gitPort, app))
	if out, err := repo.git("push", "bad", "main"); err == nil || !strings.Contains(out, "Authentication failed") {
		t.Errorf("push with a wrong token: %v\n%s", err, out)
	}
	repo.must("remote", "add", "prod", remote)
	// Push options set what deploy flags set: the first push names the port.
	out, err := repo.git("push", "-o", fmt.Sprintf("port=%d", port), "prod", "main")
	if err != nil {
		t.Fatalf("push v1: %v\n%s", err, out)
	}
	for _, want := range []string{"remote: ", "deploying commit " + first[:12] + " to app " + app, "==> build", "is serving"} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q:\n%s", want, out)
		}
	}
	if body := get(t, port); body != "v1 v1" {
		t.Errorf("after push v1 GET = %q", body)
	}

	// v2 under load.
	second := repo.commit("v2")
	load := testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v1 v1", 20)
	if out, err := repo.git("push", "prod", "main"); err != nil {
		t.Fatalf("push v2: %v\n%s", err, out)
	}
	// The push ends with v1 removed; the load carries on past it.
	testenv.Answered(t, load, "v2 v2", 20)
	r := load.Stop()
	t.Logf("load during push v2: %s", r)
	if r.Failed != 0 {
		t.Errorf("load during push v2: %s", r)
	}

	// A broken commit: the push is rejected with the reason, the branch
	// on the server stays at v2, and v2 keeps serving.
	repo.commit("v3", "ENV APP_CRASH=1")
	out, err = repo.git("push", "prod", "main")
	if err == nil || !strings.Contains(out, "pre-receive hook declined") || !strings.Contains(out, "crashing on purpose") || !strings.Contains(out, "v2 keeps serving") {
		t.Errorf("push of a broken commit: %v\n%s", err, out)
	}
	if body := get(t, port); body != "v2 v2" {
		t.Errorf("after the rejected push GET = %q", body)
	}
	if head := strings.Fields(repo.must("ls-remote", "prod", "refs/heads/main")); len(head) == 0 || head[0] != second {
		t.Errorf("the server's main is %v, want %s", head, second)
	}
	vs := versionsOf(t, a, app)
	if vs["v2"].Commit != second || vs["v3"].Status != store.StatusFailed {
		t.Errorf("versions: v2 %+v, v3 %+v", vs["v2"], vs["v3"])
	}
	// Another branch is kept, not deployed.
	repo.must("checkout", "-qb", "feature")
	if out := repo.must("push", "prod", "feature"); !strings.Contains(out, "feature is not the deploy branch (main): kept, not deployed") {
		t.Errorf("push of another branch:\n%s", out)
	}

	// The agent clones from its own git server with the token in the URL;
	// the token shows nowhere.
	a.mustSprout("deploy", remote+"#main", "--app", app+"-http", "--port", fmt.Sprint(testenv.FreePort(t)))
	seen := a.log.String() + a.mustSprout("events") + a.mustSprout("versions", "--app", app+"-http", "--json") + a.mustSprout("status", "--app", app+"-http", "--json") + a.mustSprout("apps")
	if strings.Contains(seen, token) {
		t.Errorf("the git token shows in the agent's log, events, versions or status")
	}
}

// waitBody polls the app's port until it answers want.
func waitBody(t *testing.T, port int, want string, within time.Duration) {
	t.Helper()
	testenv.Eventually(t, within, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			return fmt.Errorf("the app answers %q, not %q", b, want)
		}
		return nil
	})
}

// TestPullMode runs an app that follows a manifest in S3: `sprout publish`
// writes it, the agent converges on each change (a new version under load
// with 0 failed requests, an environment change, a version it still has),
// and a manifest naming a missing bundle or a version that crashes leaves
// the serving version serving and says why, naming the version the
// manifest wants.
func TestPullMode(t *testing.T) {
	fake := testenv.S3(t, "fleet")
	a := startAgent(t, append(s3Env(fake), "SPROUT_WATCH_INTERVAL=300ms")...)
	app, port := testenv.Name("pull"), testenv.FreePort(t)
	fake.Put(t, "fleet", "web/v1.tar.gz", packed(t, testenv.Bundle(t, "")))
	fake.Put(t, "fleet", "web/v2.tar.gz", packed(t, testenv.Bundle(t, "")))
	manifest := "s3://fleet/envs/" + app + "/current.json"
	publish := func(args ...string) string {
		t.Helper()
		return a.mustSprout(append([]string{"publish", "--manifest", manifest, "--app", app}, args...)...)
	}

	out := publish("--label", "v1", "--bundle", "s3://fleet/web/v1.tar.gz", "--env", "GREETING=hello", "--port", fmt.Sprint(port))
	if !strings.Contains(out, "published v1") {
		t.Errorf("publish: %s", out)
	}
	a.mustSprout("watch", "--app", app, manifest)
	waitBody(t, port, "v1 hello", time.Minute)

	load := testenv.Load(t, port, 8)
	publish("--label", "v2", "--bundle", "s3://fleet/web/v2.tar.gz")
	waitBody(t, port, "v2 hello", time.Minute)
	publish("--label", "v2", "--bundle", "s3://fleet/web/v2.tar.gz", "--env", "GREETING=bye")
	waitBody(t, port, "v2 bye", time.Minute)
	// The change is done once the old container is drained and removed;
	// the load carries on past it.
	testenv.Eventually(t, time.Minute, func() error {
		if events := a.mustSprout("events", "--app", app); !strings.Contains(events, "environment changed by the manifest: live on v2") {
			return fmt.Errorf("the environment change did not finish:\n%s", events)
		}
		return nil
	})
	testenv.Answered(t, load, "v2 bye", 20)
	r := load.Stop()
	t.Logf("load while converging on v2 and its new environment: %s", r)
	if r.Failed != 0 {
		t.Errorf("load: %s", r)
	}

	// A manifest naming a missing bundle (publish itself refuses it, so
	// it is written directly).
	if _, errOut, code := a.sprout("publish", "--manifest", manifest, "--label", "v3", "--bundle", "s3://fleet/web/v3.tar.gz"); code == 0 || !strings.Contains(errOut, "no such object") {
		t.Errorf("publish of a missing bundle: exit %d %s", code, errOut)
	}
	s, err := source.NewS3(context.Background(), source.S3Options{Endpoint: fake.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	bad := &source.Manifest{App: app, Label: "v3", Bundle: "web/v3.tar.gz", Env: map[string]string{"GREETING": "bye"}}
	if _, err := s.Put(context.Background(), source.Object{Bucket: "fleet", Key: "envs/" + app + "/current.json"}, bad.Marshal(), "application/json"); err != nil {
		t.Fatal(err)
	}
	if r := notApplied(t, a, app, "v3"); !strings.HasPrefix(r, "manifest "+manifest+" (ETag ") || !strings.Contains(r, "s3://fleet/web/v3.tar.gz: no such object") || !strings.HasSuffix(r, "; v2 keeps serving") {
		t.Errorf("the missing bundle: %s", r)
	}
	if body := get(t, port); body != "v2 bye" {
		t.Errorf("after the bad manifest GET = %q", body)
	}

	// A version that crashes: it fails its health check, and the app
	// says which version the manifest wants.
	fake.Put(t, "fleet", "web/v4.tar.gz", packed(t, testenv.Bundle(t, "", "ENV APP_CRASH=1")))
	publish("--label", "v4", "--bundle", "s3://fleet/web/v4.tar.gz")
	if r := notApplied(t, a, app, "v4"); !strings.Contains(r, "exited with code 3") || !strings.HasSuffix(r, "; v2 keeps serving") {
		t.Errorf("the crashing version: %s", r)
	}
	if body := get(t, port); body != "v2 bye" {
		t.Errorf("after the crashing version GET = %q", body)
	}
	if st := a.mustSprout("status", "--app", app); !strings.Contains(st, "follows:") || !strings.Contains(st, "wants v4, not applied") {
		t.Errorf("status:\n%s", st)
	}

	// Back to a version the host still has: served again from its image.
	publish("--label", "v1", "--bundle", "s3://fleet/web/v1.tar.gz")
	waitBody(t, port, "v1 bye", time.Minute)
	// After a restart the agent reads the manifest again (it has no ETag
	// yet), finds it served, and changes nothing.
	n := len(versionsOf(t, a, app))
	// All the app's events, not the newest 50: the count must not move
	// because the window did.
	allEvents := func() string { return a.mustSprout("events", "--app", app, "--limit", "1000") }
	swaps := strings.Count(allEvents(), ": swap")
	a.kill(15)
	a.start()
	testenv.Eventually(t, time.Minute, func() error {
		if st := a.mustSprout("status", "--app", app); !strings.Contains(st, "serving v1 as manifest") {
			return fmt.Errorf("the manifest was not read after the restart:\n%s", st)
		}
		return nil
	})
	events := allEvents()
	if body := get(t, port); body != "v1 bye" || len(versionsOf(t, a, app)) != n || strings.Count(events, ": swap") != swaps {
		t.Errorf("after a restart: GET = %q, %d versions (was %d), events:\n%s", body, len(versionsOf(t, a, app)), n, events)
	}
}

// notApplied waits until the app's follow state says that the manifest
// wanting label was not applied, checks that its events say so too, and
// returns what it says.
func notApplied(t *testing.T, a *agentProc, app, label string) string {
	t.Helper()
	want := "wants " + label + ", not applied: "
	var result string
	testenv.Eventually(t, time.Minute, func() error {
		var st []api.AppStatus
		if err := json.Unmarshal([]byte(a.mustSprout("status", "--app", app, "--json")), &st); err != nil || len(st) != 1 {
			t.Fatalf("status --json: %v", err)
		}
		if f := st[0].Follows; f != nil && strings.Contains(f.Result, want) {
			result = f.Result
			return nil
		}
		return fmt.Errorf("no follow state says %q:\n%s", want, a.mustSprout("events", "--app", app))
	})
	if events := a.mustSprout("events", "--app", app); !strings.Contains(events, result) {
		t.Errorf("the events do not say %q:\n%s", result, events)
	}
	return result
}

package e2e

import (
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

	"github.com/sprout-paas/sprout/internal/testenv"
)

// flaskBundle copies examples/flask, with its GREETING property changed
// when greeting is not empty, so that a new version differs from the last.
func flaskBundle(t *testing.T, greeting string) string {
	t.Helper()
	testenv.BaseImage(t)
	dir := filepath.Join(t.TempDir(), "flask")
	if out, err := exec.Command("cp", "-a", filepath.Join(testenv.RepoRoot(), "examples", "flask"), dir).CombinedOutput(); err != nil {
		t.Fatalf("copy the example: %v %s", err, out)
	}
	if greeting != "" {
		p := filepath.Join(dir, ".ebextensions", "01-options.config")
		b, _ := os.ReadFile(p)
		b = []byte(strings.Replace(string(b), "GREETING: Hello from Flask on Sprout", "GREETING: "+greeting, 1))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type record struct {
	ID      int    `json:"id"`
	Body    string `json:"body"`
	Version string `json:"version"`
}

func records(t *testing.T, port int) []record {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/records", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []record
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("GET /records: %s: %v", resp.Status, err)
	}
	return out
}

func addRecords(t *testing.T, port int, prefix string, n int) {
	t.Helper()
	for i := range n {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/records", port), "text/plain", strings.NewReader(fmt.Sprintf("%s-%d", prefix, i)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("POST /records: %s %s", resp.Status, b)
		}
	}
}

// checkRecords fails unless the app returns exactly the want records, in
// order.
func checkRecords(t *testing.T, port int, when string, want []string) {
	t.Helper()
	got := records(t, port)
	var bodies []string
	for _, r := range got {
		bodies = append(bodies, r.Body)
	}
	if strings.Join(bodies, ",") != strings.Join(want, ",") {
		t.Errorf("%s: records = %v, want %v", when, bodies, want)
	}
}

func names(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

// flaskLifecycle deploys the Flask example, writes records, deploys v2
// under continuous requests with a slow request in flight, rolls back,
// restarts the agent, and reads every record back after each step.
func flaskLifecycle(t *testing.T, a *agentProc, app string, port int, dialect string) []string {
	out := a.mustSprout("deploy", flaskBundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port))
	for _, want := range []string{
		".ebextensions: 2 environment properties (GREETING, WORKERS)",
		".ebextensions: health check URL /health",
		"[hooks/predeploy/01-announce.sh] predeploy: " + app + " v1 will use",
		"waiting until GET /health answers",
		"/data is kept across deploys in volume sprout-" + a.id + "-" + app + "--data",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy output lacks %q:\n%s", want, out)
		}
	}
	if body := get(t, port); body != "v1 "+dialect+" Hello from Flask on Sprout\n" {
		t.Fatalf("GET / = %q", body)
	}
	addRecords(t, port, "v1", 20)
	want := names("v1", 20)

	// v2 under load. A gunicorn worker busy with a slow request when the
	// swap happens finishes it: the proxy drains v1 before gunicorn gets
	// SIGTERM.
	slow := make(chan string, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/slow?s=3", port))
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- resp.Status + " " + string(b)
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		n, err := a.inFlight(app)
		if err == nil && n != 1 {
			err = fmt.Errorf("%d requests in flight, want the slow one", n)
		}
		return err
	})
	// Each version answers the load, and it carries on after each change
	// is done.
	load := testenv.Load(t, port, 8)
	v1 := "v1 " + dialect + " Hello from Flask on Sprout\n"
	testenv.Answered(t, load, v1, 20)
	a.mustSprout("deploy", flaskBundle(t, "Hello from v2"), "--app", app, "--label", "v2")
	testenv.Answered(t, load, "v2 "+dialect+" Hello from v2\n", 20)
	a.mustSprout("rollback", "--app", app)
	testenv.Answered(t, load, v1, 20)
	r := load.Stop()
	t.Logf("load through the deploy of v2 and the rollback: %s", r)
	if r.Failed != 0 {
		t.Errorf("requests failed: %s", r)
	}
	if got := <-slow; !strings.HasPrefix(got, "200 OK") || !strings.Contains(got, `"version":"v1"`) {
		t.Errorf("the slow request during the swap: %s", got)
	}
	checkRecords(t, port, "after v2 and the rollback", want)
	if body := get(t, port); !strings.HasPrefix(body, "v1 ") {
		t.Errorf("after the rollback GET / = %q", body)
	}

	a.kill(15)
	a.start()
	checkRecords(t, port, "after an agent restart", want)
	addRecords(t, port, "after", 2)
	return append(want, names("after", 2)...)
}

// TestFlaskWithPostgres runs the Flask example as a team leaving Elastic
// Beanstalk would: the RDS settings point at a real PostgreSQL server
// (Debian's), the container gets DATABASE_URL built from them, and every
// record written survives a deploy under load, a rollback and an agent
// restart, in the database itself.
func TestFlaskWithPostgres(t *testing.T) {
	testenv.BaseImage(t)
	pg := testenv.Postgres(t)
	a := startAgent(t)
	app, port := testenv.Name("flaskpg"), testenv.FreePort(t)

	out := a.mustSprout("setenv", "--app", app, "--rds", pg.URL())
	if !strings.Contains(out, "applies from the first deploy") {
		t.Errorf("setenv --rds before the first deploy said:\n%s", out)
	}
	want := flaskLifecycle(t, a, app, port, "postgresql")
	if n := pg.Query(t, "SELECT count(*) FROM records"); n != fmt.Sprint(len(want)) {
		t.Errorf("PostgreSQL has %s records, want %d", n, len(want))
	}
	env, errOut, _ := a.sprout("printenv", "--app", app)
	for _, w := range []string{"RDS_HOSTNAME=" + pg.Host, "RDS_DB_NAME=ebdb", "RDS_PASSWORD=********", "DATABASE_URL=********", "GREETING=Hello from Flask on Sprout"} {
		if !strings.Contains(env, w) {
			t.Errorf("printenv lacks %q:\n%s", w, env)
		}
	}
	if strings.Contains(env, pg.Password) || !strings.Contains(errOut, "built by Sprout from RDS_*: DATABASE_URL") {
		t.Errorf("printenv:\n%s\n%s", env, errOut)
	}
	// The password reached the app URL-encoded: it has @, :, / and %.
	logs := a.mustSprout("logs", "--app", app, "--files", "--tail", "5")
	if !strings.Contains(logs, "==> /var/log/gunicorn/access.log <==") || !strings.Contains(logs, `"POST /records HTTP/1.1" 201`) {
		t.Errorf("logs --files:\n%s", logs)
	}
}

// TestFlaskWithSQLiteOnAVolume runs the Flask example with no database
// settings: it keeps SQLite on the image's VOLUME /data, which Sprout
// keeps as the app's persistent volume through deploys, a rollback, an
// agent restart and `apps rm`, until `apps rm --purge`.
func TestFlaskWithSQLiteOnAVolume(t *testing.T) {
	testenv.BaseImage(t)
	a := startAgent(t)
	app, port := testenv.Name("flasklite"), testenv.FreePort(t)
	want := flaskLifecycle(t, a, app, port, "sqlite")

	vols := a.mustSprout("volumes", "--app", app)
	if !strings.Contains(vols, "data  /data") || !strings.Contains(vols, "image VOLUME") || !strings.Contains(vols, "Dockerrun.aws.json Logging") {
		t.Errorf("volumes:\n%s", vols)
	}
	out := a.mustSprout("apps", "rm", app)
	if !strings.Contains(out, "kept 1 volume(s)") {
		t.Errorf("apps rm said:\n%s", out)
	}
	a.mustSprout("deploy", flaskBundle(t, ""), "--app", app, "--port", fmt.Sprint(port))
	checkRecords(t, port, "after apps rm and a new deploy", want)
	out = a.mustSprout("apps", "rm", app, "--purge")
	vol := "sprout-" + a.id + "-" + app + "--data"
	if !strings.Contains(out, "deleted volume "+vol) {
		t.Errorf("apps rm --purge said:\n%s", out)
	}
	if exec.Command("docker", "volume", "inspect", vol).Run() == nil {
		t.Error("the volume survived --purge")
	}
}

// TestBadBundlesNameTheFile deploys bundles with a malformed
// Dockerrun.aws.json, .ebextensions file and hook through the CLI: each is
// refused with the file, the line or key, and the fix, and v1 keeps
// serving.
func TestBadBundlesNameTheFile(t *testing.T) {
	a := startAgent(t)
	app, port := testenv.Name("badeb"), testenv.FreePort(t)
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port))
	cases := []struct {
		file, body string
		mode       os.FileMode
		want       []string
	}{
		{"Dockerrun.aws.json", `{"AWSEBDockerrunVersion": "1", "Logging": "logs"}`, 0o644,
			[]string{"Dockerrun.aws.json: Logging:", `"logs" is not an absolute path`}},
		{".ebextensions/01-options.config", "option_settings:\n  aws:elasticbeanstalk:command:\n    Timeout: soon\n", 0o644,
			[]string{".ebextensions/01-options.config line 3", "Timeout", "from 1 to 3600"}},
		{".platform/hooks/predeploy/01.sh", "#!/bin/bash\r\necho hi\r\n", 0o755,
			[]string{".platform/hooks/predeploy/01.sh", "Windows line endings", "dos2unix"}},
	}
	for _, tc := range cases {
		dir := testenv.Bundle(t, "")
		p := filepath.Join(dir, tc.file)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(tc.body), tc.mode); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := a.sprout("deploy", dir, "--app", app)
		all := out + errOut
		if code != 1 || !strings.Contains(all, "v1 keeps serving") {
			t.Errorf("%s: exit %d:\n%s", tc.file, code, all)
		}
		for _, w := range tc.want {
			if !strings.Contains(all, w) {
				t.Errorf("%s: output lacks %q:\n%s", tc.file, w, all)
			}
		}
		if body := get(t, port); body != "v1 " {
			t.Errorf("after %s GET = %q", tc.file, body)
		}
	}
}

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/source"
)

// fakeIMDS is an instance metadata service that, like EC2's with IMDSv2
// required, answers only requests that carry a session token, and hands
// out an instance role's credentials.
type fakeIMDS struct {
	URL       string
	credsRead atomic.Int64
}

func startIMDS(t *testing.T) *fakeIMDS {
	t.Helper()
	f := &fakeIMDS{}
	const token = "imds-session-token"
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
			ttl := r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds")
			if ttl == "" {
				http.Error(w, "missing TTL", http.StatusBadRequest)
				return
			}
			w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", ttl)
			fmt.Fprint(w, token)
			return
		}
		if r.Header.Get("X-aws-ec2-metadata-token") != token {
			http.Error(w, "IMDSv2 token required", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/latest/meta-data/placement/region":
			fmt.Fprint(w, "eu-west-3")
		case "/latest/meta-data/instance-id":
			fmt.Fprint(w, "i-0123456789abcdef0")
		case "/latest/meta-data/iam/security-credentials/":
			fmt.Fprint(w, "sprout-host")
		case "/latest/meta-data/iam/security-credentials/sprout-host":
			f.credsRead.Add(1)
			fmt.Fprintf(w, `{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAROLE","SecretAccessKey":"role-secret","Token":"role-session","Expiration":%q,"LastUpdated":%q}`,
				time.Now().Add(6*time.Hour).UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
		default:
			http.NotFound(w, r)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// TestUserDataBootstrap runs scripts/user-data.sh for real, as root, in a
// container made from the local Debian base image (the host's Docker
// socket mounted in, the host's network so that it reaches a loopback S3
// and a fake IMDSv2): the script installs what it needs and the sprout
// binary from S3, writes the agent's config from its variables and the
// instance metadata, starts the agent without systemd, and the app named
// by the manifest ends up serving. A second run changes nothing.
func TestUserDataBootstrap(t *testing.T) {
	testenv.BaseImage(t)
	if _, err := exec.LookPath("shellcheck"); err == nil {
		if out, err := exec.Command("shellcheck", filepath.Join(testenv.RepoRoot(), "scripts", "user-data.sh")).CombinedOutput(); err != nil {
			t.Errorf("shellcheck:\n%s", out)
		}
	} else if os.Getenv("CI") == "true" {
		t.Error("CI=true but shellcheck is not installed (scripts/ensure-test-deps.sh installs it)")
	}
	// The unit the script installs is configs/sprout-agent.service.
	script, _ := os.ReadFile(filepath.Join(testenv.RepoRoot(), "scripts", "user-data.sh"))
	unit, _ := os.ReadFile(filepath.Join(testenv.RepoRoot(), "configs", "sprout-agent.service"))
	if !strings.Contains(string(script), "<<'UNIT'\n"+string(unit)+"UNIT\n") {
		t.Error("scripts/user-data.sh does not embed configs/sprout-agent.service as it is")
	}

	fake, imds := bootstrapServices(t)
	fake.Put(t, "fleet", "web/v1.tar.gz", packed(t, testenv.Bundle(t, "", "ENV GREETING=bootstrapped")))
	app, port := testenv.Name("boot"), testenv.FreePort(t)
	s, err := source.NewS3(context.Background(), source.S3Options{Endpoint: fake.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	m := &source.Manifest{App: app, Label: "v1", Bundle: "web/v1.tar.gz"}
	if _, err := s.Put(context.Background(), source.Object{Bucket: "fleet", Key: "envs/" + app + "/current.json"}, m.Marshal(), "application/json"); err != nil {
		t.Fatal(err)
	}

	name := bootInstance(t, fake, imds, app,
		"SPROUT_APP="+app,
		"SPROUT_MANIFEST=s3://fleet/envs/"+app+"/current.json",
		fmt.Sprintf("SPROUT_PORT=%d", port))
	waitBody(t, port, "v1 bootstrapped", 4*time.Minute)
	if imds.credsRead.Load() == 0 {
		t.Error("the agent did not take its credentials from the instance role (IMDS)")
	}
	exec1 := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("docker", append([]string{"exec", name}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	conf := exec1("cat", "/etc/sprout/agent.yaml")
	for _, want := range []string{"instance i-0123456789abcdef0 (eu-west-3)", "region: eu-west-3", "manifest: s3://fleet/envs/" + app + "/current.json", fmt.Sprintf("port: %d", port)} {
		if !strings.Contains(conf, want) {
			t.Errorf("agent.yaml lacks %q:\n%s", want, conf)
		}
	}
	pid := exec1("cat", "/run/sprout/agent.pid")

	// A second run changes nothing.
	out := exec1("bash", "/user-data.sh")
	for _, want := range []string{"/usr/local/bin/sprout is up to date", "/etc/sprout/agent.yaml is up to date", "runs with this configuration; nothing to do", "the agent answers"} {
		if !strings.Contains(out, want) {
			t.Errorf("second run lacks %q:\n%s", want, out)
		}
	}
	// What the script says when it changes something: "wrote FILE",
	// "installed /usr/local/bin/sprout", "installing PACKAGES", "started".
	changed := regexp.MustCompile(`sprout-bootstrap: \S+ (wrote |installed /|installing |started|no systemd: started)`)
	if changed.MatchString(out) || exec1("cat", "/run/sprout/agent.pid") != pid {
		t.Errorf("the second run changed something:\n%s", out)
	}
	if body := get(t, port); body != "v1 bootstrapped" {
		t.Errorf("after the second run GET = %q", body)
	}
	// The log holds both runs; the first one changed things, and the
	// pattern above sees it.
	if log := exec1("cat", "/var/log/sprout-bootstrap.log"); !changed.MatchString(log) {
		t.Errorf("bootstrap log:\n%s", log)
	}

	// A run with a new sprout binary upgrades the running agent in place:
	// a new process serves the new version, and the app's requests do not
	// notice.
	bin, err := os.ReadFile(testenv.SproutVersion(t, "userdata-b"))
	if err != nil {
		t.Fatal(err)
	}
	fake.Put(t, "releases", "sprout/latest/sprout", bin)
	load := loadgen.Start(loadgen.Options{URL: fmt.Sprintf("http://127.0.0.1:%d/", port), Workers: 2, Duration: 5 * time.Minute})
	out = exec1("bash", "/user-data.sh")
	r := load.Stop()
	for _, want := range []string{"installed /usr/local/bin/sprout", "upgrading the running agent (pid " + strings.TrimSpace(pid), "upgraded the agent in place: agent:  sprout userdata-b, pid "} {
		if !strings.Contains(out, want) {
			t.Errorf("the run with a new binary lacks %q:\n%s", want, out)
		}
	}
	if newPid := exec1("cat", "/run/sprout/agent.pid"); newPid == pid || strings.Contains(out, "started the agent directly") {
		t.Errorf("the agent was not upgraded in place (pid %s, then %s):\n%s", pid, newPid, out)
	}
	if r.Failed > 0 || r.OK == 0 {
		t.Errorf("load on the app during the upgrade: %s", r)
	}
	if body := get(t, port); body != "v1 bootstrapped" {
		t.Errorf("after the upgrade GET = %q", body)
	}
}

// bootInstance runs scripts/user-data.sh in a fresh Debian container on
// the host's network, as EC2 runs user data, with the binary and the
// bundles in fake and the instance metadata of imds, plus env; it returns
// the container's name.
func bootInstance(t *testing.T, fake *testenv.FakeS3, imds *fakeIMDS, app string, env ...string) string {
	t.Helper()
	name := "sprout-userdata-" + app
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "exec", name, "sh", "-c", "cat /var/log/sprout-bootstrap.log /var/log/sprout-agent.log").CombinedOutput()
			t.Logf("inside the instance:\n%s", out)
		}
		exec.Command("docker", "rm", "-f", name).Run()
		testenv.CleanupApp(t, app)
	})
	args := []string{"run", "-d", "--name", name, "--network", "host",
		"-v", "/var/run/docker.sock:/var/run/docker.sock",
		"-v", filepath.Join(testenv.RepoRoot(), "scripts", "user-data.sh") + ":/user-data.sh:ro",
		"-e", "SPROUT_BINARY_URL=" + fake.URL + "/releases/sprout/latest/sprout",
		"-e", "SPROUT_S3_ENDPOINT=" + fake.URL,
		"-e", "SPROUT_S3_PATH_STYLE=true",
		"-e", "SPROUT_IMDS_ENDPOINT=" + imds.URL}
	for _, e := range env {
		args = append(args, "-e", e)
	}
	args = append(args, "debian:bookworm-slim", "bash", "-c", "bash /user-data.sh && exec sleep infinity")
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	return name
}

// TestUserDataJoinsEnvironment bootstraps an instance into an environment
// (SPROUT_ENVIRONMENT): it joins under its instance id, and a deploy to
// the environment from outside reaches it.
func TestUserDataJoinsEnvironment(t *testing.T) {
	testenv.BaseImage(t)
	fake, imds := bootstrapServices(t)
	app, port := testenv.Name("join"), testenv.FreePort(t)
	env := "s3://fleet/envs/" + app + "/"
	name := bootInstance(t, fake, imds, app, "SPROUT_ENVIRONMENT="+env)
	sprout := func(args ...string) ([]byte, error) {
		cmd := exec.Command(testenv.SproutBinary(t), args...)
		cmd.Env = append(os.Environ(), "SPROUT_S3_ENDPOINT="+fake.URL, "SPROUT_S3_PATH_STYLE=true")
		return cmd.CombinedOutput()
	}
	testenv.Eventually(t, 4*time.Minute, func() error {
		out, err := sprout("status", "--env", env)
		if err != nil || !strings.Contains(string(out), "i-0123456789abcdef0") {
			return fmt.Errorf("the instance has not joined %s: %v\n%s", env, err, out)
		}
		return nil
	})
	if out, err := sprout("deploy", testenv.Bundle(t, "", "ENV GREETING=joined"), "--env", env, "--app", app, "--label", "v1", "--port", fmt.Sprint(port)); err != nil {
		t.Fatalf("deploy --env: %v\n%s", err, out)
	}
	waitBody(t, port, "v1 joined", time.Minute)
	out, err := exec.Command("docker", "exec", name, "cat", "/etc/sprout/agent.yaml").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "environment: "+env) || !strings.Contains(string(out), "host_id: i-0123456789abcdef0") {
		t.Errorf("agent.yaml: %v\n%s", err, out)
	}
}

// bootstrapServices starts what an instance's bootstrap reaches: S3 with
// the sprout binary at releases/sprout/latest/sprout and a "fleet"
// bucket, and the instance metadata service.
func bootstrapServices(t *testing.T) (*testenv.FakeS3, *fakeIMDS) {
	t.Helper()
	fake := testenv.S3(t, "releases", "fleet")
	bin, err := os.ReadFile(testenv.SproutBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	fake.Put(t, "releases", "sprout/latest/sprout", bin)
	return fake, startIMDS(t)
}

// Package testenv gives integration tests what they share: a reachable
// Docker engine (or a clear skip on a laptop, and a failure under CI), the
// test app binary built once for containers, bundles made from it, and
// clean-up of what an agent left in the engine.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	sprt "github.com/sprout-paas/sprout/runtime"
)

// Missing stops a test that needs what is missing: under CI (CI=true) it
// fails, since CI must run every test; elsewhere it skips, saying how to
// get it.
func Missing(t testing.TB, what, fix string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s (%s)", what, fix)
	}
	t.Skipf("%s: %s", what, fix)
}

// Docker returns a client of the local engine. Without one, the test is
// skipped with a message, except under CI (CI=true), where it fails.
func Docker(t testing.TB) *sprt.Docker {
	t.Helper()
	d, err := sprt.New(context.Background())
	if err != nil {
		Missing(t, fmt.Sprintf("no Docker engine answers (%v)", err), "scripts/ensure-docker.sh starts one as root, or set DOCKER_HOST")
	}
	t.Cleanup(func() { d.Close() })
	return d
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// RepoRoot is the module's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// build compiles a static binary of pkg (relative to the repo root).
func build(dir, pkg, out string, ldflags ...string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w "+strings.Join(ldflags, " "), "-o", filepath.Join(dir, out), "./"+pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return &buildError{pkg: pkg, out: string(b), err: err}
	}
	return nil
}

type buildError struct {
	pkg, out string
	err      error
}

func (e *buildError) Error() string { return "go build " + e.pkg + ": " + e.err.Error() + "\n" + e.out }

func builtBinaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "sprout-testbin-")
		if buildErr != nil {
			return
		}
		if buildErr = build(binDir, "internal/testenv/testapp", "app"); buildErr != nil {
			return
		}
		buildErr = build(binDir, "cmd/sprout", "sprout")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// SproutBinary returns the path of a freshly built sprout binary.
func SproutBinary(t testing.TB) string {
	return filepath.Join(builtBinaries(t), "sprout")
}

var versioned sync.Map // version → *versionedBuild

type versionedBuild struct {
	once sync.Once
	path string
	err  error
}

// SproutVersion returns the path of a sprout binary built, once per test
// binary, to report version (as `make build` sets it with -ldflags -X).
func SproutVersion(t testing.TB, version string) string {
	t.Helper()
	dir := builtBinaries(t)
	v, _ := versioned.LoadOrStore(version, &versionedBuild{})
	b := v.(*versionedBuild)
	b.once.Do(func() {
		b.path = filepath.Join(dir, "sprout-"+version)
		b.err = build(dir, "cmd/sprout", "sprout-"+version, "-X github.com/sprout-paas/sprout/cli.Version="+version)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// DefaultDockerfile runs the test app on port 8080.
const DefaultDockerfile = "FROM scratch\nCOPY app /app\nEXPOSE 8080\nENTRYPOINT [\"/app\"]\n"

// Bundle makes a bundle directory holding the test app and dockerfile
// (DefaultDockerfile when empty), plus extra lines appended to it.
func Bundle(t testing.TB, dockerfile string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	bin, err := os.ReadFile(filepath.Join(builtBinaries(t), "app"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "app"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if dockerfile == "" {
		dockerfile = DefaultDockerfile
	}
	dockerfile += strings.Join(extra, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Name returns a unique lowercase name with prefix, so that tests in
// different packages never share app names or image tags.
func Name(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// CleanupAgent removes, when the test ends, every container, image and
// volume that carries the agent id returned by id (read at clean-up time).
func CleanupAgent(t testing.TB, id func() string) {
	t.Cleanup(func() { removeLabelled("label=" + sprt.LabelAgent + "=" + id()) })
}

// removeLabelled removes the containers, images and volumes that match a
// docker label filter.
func removeLabelled(label string) {
	if ids := dockerLines("ps", "-aq", "--filter", label); len(ids) > 0 {
		exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
	}
	if ids := dockerLines("images", "-q", "--filter", label); len(ids) > 0 {
		exec.Command("docker", append([]string{"rmi", "-f"}, ids...)...).Run()
	}
	if names := dockerLines("volume", "ls", "-q", "--filter", label); len(names) > 0 {
		exec.Command("docker", append([]string{"volume", "rm", "-f"}, names...)...).Run()
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers, for capturing
// logs in tests.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Containers lists the IDs of containers (running or not) with the agent id.
func Containers(t testing.TB, agentID string) []string {
	t.Helper()
	return dockerLines("ps", "-aq", "--no-trunc", "--filter", "label="+sprt.LabelAgent+"="+agentID)
}

func dockerLines(args ...string) []string {
	out, err := exec.Command("docker", args...).Output()
	if err != nil {
		return nil
	}
	return strings.Fields(string(out))
}

// CleanupApp removes the containers, images and volumes of app (by
// label), for agents a test cannot ask (one inside a container).
func CleanupApp(t testing.TB, app string) {
	removeLabelled("label=" + sprt.LabelApp + "=" + app)
}

// WriteFiles adds files to a bundle directory, and returns it; a name
// ending in .sh is made executable.
func WriteFiles(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

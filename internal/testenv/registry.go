package testenv

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Registry is a Docker registry (Debian's docker-registry, the
// distribution project's) on loopback, which the engine treats as an
// insecure registry without configuration.
type Registry struct {
	Addr string
	cmd  *exec.Cmd
}

// StartRegistry starts a registry for one test. Without the package the
// test is skipped, except under CI, where it fails.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		Missing(t, "docker-registry is not installed", "scripts/ensure-test-deps.sh installs it as root: apt-get install docker-registry")
	}
	dir := t.TempDir()
	port := FreePort(t)
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%d\n", filepath.Join(dir, "data"), port)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &Registry{Addr: "127.0.0.1:" + strconv.Itoa(port)}
	r.cmd = exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	out := &SyncBuffer{}
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("registry log:\n%s", out)
		}
	})
	for i := 0; ; i++ {
		if c, err := net.DialTimeout("tcp", r.Addr, time.Second); err == nil {
			c.Close()
			return r
		}
		if i > 100 {
			t.Fatalf("the registry did not start:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the registry, as when no registry answers.
func (r *Registry) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

// Push pushes a local image to this registry as ref. The host's own ref
// stays what it was (absent, or the image it named), as if another host
// had pushed.
func (r *Registry) Push(t testing.TB, local, ref string) {
	t.Helper()
	prev, _ := exec.Command("docker", "image", "inspect", "-f", "{{.Id}}", ref).Output()
	restore := []string{"rmi", ref}
	if id := strings.TrimSpace(string(prev)); id != "" {
		restore = []string{"tag", id, ref}
	}
	for _, args := range [][]string{{"tag", local, ref}, {"push", "-q", ref}, restore} {
		if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
			t.Fatalf("docker %v: %v\n%s", args, err, out)
		}
	}
}

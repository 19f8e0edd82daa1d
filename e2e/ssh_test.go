package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/transport"
)

// TestSSH drives an agent from "another host" through Debian's sshd on
// loopback, as `sprout --host ssh://...` does from a laptop: the session
// finds sprout on its PATH and the agent's socket in SPROUT_SOCKET, both
// set per key in authorized_keys.
func TestSSH(t *testing.T) {
	sshd := testenv.SSHServer(t)
	pub := publicDir(t)
	bin := filepath.Join(pub, "bin")
	install(t, testenv.SproutBinary(t), filepath.Join(bin, "sprout"))
	group := testenv.PrimaryGroup(t).Name
	a := startAgent(t, "SPROUT_SOCKET="+filepath.Join(pub, "sprout.sock"), "SPROUT_SOCKET_GROUP="+group)

	// socket_group: the group may use the socket, others may not.
	if st, err := os.Stat(a.socket); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket with socket_group %s: %v, mode %v; want 0660", group, err, st.Mode())
	}
	key := sshd.Key(t, sessionEnv("PATH", bin+":/usr/bin:/bin"), sessionEnv("SPROUT_SOCKET", a.socket))
	remote := a.over(sshd, key)
	app, port := testenv.Name("ssh"), testenv.FreePort(t)

	// A local bundle streams through the tunnel, with the upload's
	// progress, then the deploy's.
	out := remote.mustSprout("deploy", zipDir(t, testenv.Bundle(t, "", "ENV APP_LOG_REQUESTS=1")), "--app", app, "--label", "v1", "--port", fmt.Sprint(port), "--health-path", "/healthz")
	for _, want := range []string{"==> upload", "sent in", "==> build", "==> swap", app + " v1 is serving on port " + fmt.Sprint(port)} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy over ssh lacks %q:\n%s", want, out)
		}
	}
	if got := get(t, port); !strings.HasPrefix(got, "v1") {
		t.Errorf("the app answers %q", got)
	}
	if out := remote.mustSprout("status", "--app", app); !strings.Contains(out, "v1") {
		t.Errorf("status over ssh:\n%s", out)
	}

	t.Run("logs --follow streams, Ctrl-C ends the remote side", func(t *testing.T) {
		cmd, lines := remote.follow(t, "logs", "--app", app, "--follow", "--tail", "1")
		for n := 1; n <= 3; n++ {
			path := fmt.Sprintf("/ssh-%d", n)
			testenv.Eventually(t, 30*time.Second, func() error {
				http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
				return lines.await(path, time.Second)
			})
		}
		// Ctrl-C at a terminal: the CLI and its ssh get SIGINT.
		interrupt(t, cmd, true)
		testenv.Eventually(t, 10*time.Second, func() error { return noDialStdio(filepath.Join(bin, "sprout")) })
	})

	t.Run("events --follow streams, SIGINT ends the remote side", func(t *testing.T) {
		cmd, lines := remote.follow(t, "events", "--app", app, "--follow")
		if err := lines.await("v1 is serving on port", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		remote.mustSprout("setenv", "--app", app, "GREETING=hello")
		if err := lines.await("setenv of", 60*time.Second); err != nil {
			t.Fatal(err)
		}
		// SIGINT to the CLI alone: it closes the session itself.
		interrupt(t, cmd, false)
		testenv.Eventually(t, 10*time.Second, func() error { return noDialStdio(filepath.Join(bin, "sprout")) })
	})

	// Each failure names the part that failed, with the fix.
	fails := func(t *testing.T, r *agentProc, want ...string) {
		t.Helper()
		_, stderr, code := r.sprout("status")
		t.Log(stderr)
		if code == 0 {
			t.Fatalf("status succeeded")
		}
		for _, w := range want {
			if !strings.Contains(stderr, w) {
				t.Errorf("the error lacks %q:\n%s", w, stderr)
			}
		}
		if n := strings.Count(strings.TrimSpace(stderr), "\n"); n > 0 {
			t.Errorf("the error takes %d lines, not one:\n%s", n+1, stderr)
		}
	}
	t.Run("wrong key", func(t *testing.T) {
		fails(t, a.over(sshd, testenv.NewSSHKey(t)), "ssh could not log in to", "authentication failed", "Permission denied (publickey)", "authorized_keys")
	})
	t.Run("host key changed", func(t *testing.T) {
		other := *sshd
		other.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
		pubKey, _ := os.ReadFile(testenv.NewSSHKey(t) + ".pub") // any other key will do
		fields := strings.Fields(string(pubKey))
		os.WriteFile(other.KnownHosts, fmt.Appendf(nil, "[127.0.0.1]:%d %s %s\n", sshd.Port, fields[0], fields[1]), 0o600)
		fails(t, a.over(&other, key), "the host key of 127.0.0.1 changed", "ssh-keygen -R")
	})
	t.Run("sprout not installed", func(t *testing.T) {
		fails(t, a.over(sshd, sshd.Key(t, sessionEnv("PATH", "/usr/bin:/bin"))), "sprout is not installed on "+sshd.User+"@127.0.0.1", "install it there")
	})
	t.Run("agent not running", func(t *testing.T) {
		k := sshd.Key(t, sessionEnv("PATH", bin+":/usr/bin:/bin"), sessionEnv("SPROUT_SOCKET", filepath.Join(pub, "none.sock")))
		fails(t, a.over(sshd, k), "on "+sshd.User+"@127.0.0.1", "no sprout agent answers on "+filepath.Join(pub, "none.sock"), "systemctl start sprout-agent")
	})
	t.Run("user outside the socket's group", func(t *testing.T) {
		if os.Geteuid() == 0 {
			// The session's sprout runs as nobody, who is not in the
			// socket's group.
			wrap := filepath.Join(pub, "as-nobody")
			testenv.WriteFiles(t, wrap, map[string]string{"sprout.sh": "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups -- " + filepath.Join(bin, "sprout") + " \"$@\"\n"})
			os.Rename(filepath.Join(wrap, "sprout.sh"), filepath.Join(wrap, "sprout"))
			k := sshd.Key(t, sessionEnv("PATH", wrap+":/usr/bin:/bin"), sessionEnv("SPROUT_SOCKET", a.socket))
			fails(t, a.over(sshd, k), "user nobody cannot open the agent's socket "+a.socket, "group "+group, "usermod -aG "+group+" nobody")
			return
		}
		// Not root: a socket of this user's with no permissions at all.
		sock := filepath.Join(pub, "closed.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		os.Chmod(sock, 0)
		k := sshd.Key(t, sessionEnv("PATH", bin+":/usr/bin:/bin"), sessionEnv("SPROUT_SOCKET", sock))
		fails(t, a.over(sshd, k), "cannot open the agent's socket "+sock, "owner only", "socket_group")
	})
	t.Run("API version mismatch", func(t *testing.T) {
		// An agent older than the CLI: the CLI refuses it.
		old := filepath.Join(pub, "old.sock")
		fakeAgent(t, old, "0")
		k := sshd.Key(t, sessionEnv("PATH", bin+":/usr/bin:/bin"), sessionEnv("SPROUT_SOCKET", old))
		fails(t, a.over(sshd, k), "the agent speaks API version 0", "upgrade the agent")

		// A CLI newer than the agent: the agent refuses it, through the
		// same tunnel.
		d, err := transport.ParseHost(sshd.URL(), sshd.Command(key))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := d.Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /%s/agent HTTP/1.1\r\nHost: sprout\r\n%s: %d\r\n\r\n", api.Version, api.ProtocolHeader, api.Protocol+1)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "upgrade the agent") || resp.Header.Get(api.ProtocolHeader) != fmt.Sprint(api.Protocol) {
			t.Errorf("a newer CLI's request: %s %s %s", resp.Status, resp.Header, body)
		}
	})
	t.Run("unix host", func(t *testing.T) {
		local := *a
		local.env = append(slices.Clone(a.env), "SPROUT_SOCKET=/nonexistent/sprout.sock")
		if out := local.mustSprout("--host", "unix://"+a.socket, "apps"); !strings.Contains(out, app) {
			t.Errorf("apps through unix://:\n%s", out)
		}
	})
	// Last: the agent is another process afterwards.
	t.Run("agent upgrade", func(t *testing.T) {
		before, err := api.NewClient(a.socket).Agent(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out := remote.mustSprout("agent", "upgrade")
		if !strings.Contains(out, "==> start") || !strings.Contains(out, fmt.Sprintf("was sprout %s (pid %d)", before.Version, before.PID)) {
			t.Errorf("agent upgrade over ssh:\n%s", out)
		}
		after, err := api.NewClient(a.socket).Agent(context.Background())
		if err != nil || after.PID == before.PID {
			t.Fatalf("after the upgrade over ssh: %+v, %v", after, err)
		}
		if out := remote.mustSprout("version"); !strings.Contains(out, fmt.Sprintf("pid %d, up ", after.PID)) {
			t.Errorf("version over ssh:\n%s", out)
		}
		if got := get(t, port); !strings.HasPrefix(got, "v1") {
			t.Errorf("the app after the upgrade answers %q", got)
		}
	})
}

// over is the CLI of a user on another host: the agent reached through
// sshd with key, and no agent on a local socket.
func (a *agentProc) over(s *testenv.SSHD, key string) *agentProc {
	r := *a
	r.env = append(slices.Clone(a.env), "SPROUT_HOST="+s.URL(), "SPROUT_SSH_COMMAND="+s.Command(key), "SPROUT_SOCKET=/nonexistent/sprout.sock")
	return &r
}

// follow starts a CLI command that runs until interrupted, and returns it
// and its output's lines.
func (a *agentProc) follow(t *testing.T, args ...string) (*exec.Cmd, *lineReader) {
	t.Helper()
	cmd := exec.Command(a.bin, args...)
	cmd.Env = a.env
	// Its own process group, as a terminal's foreground job, which
	// Ctrl-C signals as a whole (ssh too).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testenv.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("stderr of sprout %s:\n%s", strings.Join(args, " "), stderr.String())
		}
	})
	lr := &lineReader{ch: make(chan string, 1000)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lr.ch <- sc.Text()
		}
		close(lr.ch)
	}()
	return cmd, lr
}

// lineReader hands out a command's output lines as they come.
type lineReader struct {
	ch   chan string
	seen []string
}

// await waits up to within for a line containing s.
func (l *lineReader) await(s string, within time.Duration) error {
	timeout := time.After(within)
	for {
		select {
		case line, ok := <-l.ch:
			if !ok {
				return fmt.Errorf("the output ended without %q:\n%s", s, strings.Join(l.seen, "\n"))
			}
			l.seen = append(l.seen, line)
			if strings.Contains(line, s) {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("no %q in the output yet:\n%s", s, strings.Join(l.seen, "\n"))
		}
	}
}

// interrupt sends Ctrl-C's signal to a following CLI, or to its whole
// process group as a terminal does, and the CLI must end at once and
// cleanly.
func interrupt(t *testing.T, cmd *exec.Cmd, group bool) {
	t.Helper()
	if group {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	} else {
		cmd.Process.Signal(os.Interrupt)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the interrupted CLI: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the CLI did not end within 10s of Ctrl-C")
	}
}

// noDialStdio checks that no `sprout dial-stdio` of the binary bin runs:
// the remote side of every session ended.
func noDialStdio(bin string) error {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if exe, _ := os.Readlink(p + "/exe"); exe != bin {
			continue
		}
		if cmdline, _ := os.ReadFile(p + "/cmdline"); strings.Contains(string(cmdline), "dial-stdio") {
			return fmt.Errorf("sprout dial-stdio still runs as %s", filepath.Base(p))
		}
	}
	return nil
}

// sessionEnv is an authorized_keys option that sets a variable in the ssh
// sessions of that key.
func sessionEnv(k, v string) string { return fmt.Sprintf("environment=%q", k+"="+v) }

// publicDir is a directory every user may enter, as /run/sprout is.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sprout-ssh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fakeAgent serves, on a unix socket, an agent that speaks API version
// protocol.
func fakeAgent(t *testing.T, sock, protocol string) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(api.ProtocolHeader, protocol)
		w.Write([]byte("[]"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

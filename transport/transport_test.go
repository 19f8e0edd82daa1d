package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseHost(t *testing.T) {
	for _, tc := range []struct {
		host, sshCommand string
		want             []string // ssh's argv, or the unix socket's path
	}{
		{"ssh://deploy@web-1", "", []string{"ssh", "-T", "--", "deploy@web-1", "sprout", "dial-stdio"}},
		{"ssh://web-1.example.com:2222", "", []string{"ssh", "-T", "-p", "2222", "--", "web-1.example.com", "sprout", "dial-stdio"}},
		{"ssh://deploy@10.0.0.5:22/", `ssh -i "/keys/ci key" -o 'StrictHostKeyChecking=yes'`,
			[]string{"ssh", "-i", "/keys/ci key", "-o", "StrictHostKeyChecking=yes", "-T", "-p", "22", "--", "deploy@10.0.0.5", "sprout", "dial-stdio"}},
		{"unix:///run/sprout/sprout.sock", "", []string{"/run/sprout/sprout.sock"}},
	} {
		d, err := ParseHost(tc.host, tc.sshCommand)
		if err != nil {
			t.Errorf("%s: %v", tc.host, err)
			continue
		}
		var got []string
		switch d := d.(type) {
		case *SSH:
			got = append([]string{d.Command[0]}, d.args()...)
		case Unix:
			got = []string{d.Path}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.host, got, tc.want)
		}
	}
	for _, bad := range []string{"web-1", "deploy@web-1", "ssh://", "ssh://web-1/run/sprout.sock", "ssh://u:pw@web-1", "unix://relative.sock", "tcp://web-1:80"} {
		if _, err := ParseHost(bad, ""); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	if _, err := ParseHost("ssh://web-1", `ssh -i "unterminated`); err == nil || !strings.Contains(err.Error(), "SPROUT_SSH_COMMAND") {
		t.Errorf("a bad SPROUT_SSH_COMMAND: %v", err)
	}
}

func TestClassify(t *testing.T) {
	s := &SSH{Command: []string{"ssh"}, User: "deploy", Host: "web-1", Port: "2222"}
	changed := `@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Offending ED25519 key in /home/me/.ssh/known_hosts:7
Host key for [web-1]:2222 has changed and you have requested strict checking.
Host key verification failed.
`
	for _, tc := range []struct {
		name   string
		code   int
		stderr string
		kind   error
		says   []string
	}{
		{"host key changed", 255, changed, ErrHostKey, []string{"host key of web-1 changed", "/home/me/.ssh/known_hosts line 7", "ssh-keygen -R '[web-1]:2222'"}},
		{"host key unknown", 255, "No ED25519 host key is known for [web-1]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n", ErrHostKey, []string{"does not know the host key of web-1", "ssh -p 2222 deploy@web-1"}},
		{"auth", 255, "deploy@web-1: Permission denied (publickey).\r\n", ErrAuth, []string{"could not log in to deploy@web-1:2222", "Permission denied (publickey)", "ssh -i KEY"}},
		{"refused", 255, "ssh: connect to host web-1 port 2222: Connection refused\r\n", ErrSSH, []string{"could not connect to deploy@web-1:2222", "Connection refused"}},
		{"unknown name", 255, "ssh: Could not resolve hostname web-1: Name or service not known\r\n", ErrSSH, []string{"could not connect", "Could not resolve hostname"}},
		{"bash", 127, "bash: line 1: sprout: command not found\n", ErrNotInstalled, []string{"sprout is not installed on deploy@web-1:2222", "command not found"}},
		{"dash", 127, "sh: 1: sprout: not found\n", ErrNotInstalled, []string{"not installed"}},
		{"too old", 1, "Error: unknown command \"dial-stdio\" for \"sprout\"\nRun 'sprout --help' for usage.\n", ErrNotInstalled, []string{"too old", "upgrade it"}},
		{"denied", StdioExit, "Warning: Permanently added 'web-1' (ED25519) to the list of known hosts.\r\n" + StdioPrefix + "denied: user deploy cannot open the agent's socket /run/sprout/sprout.sock\n", ErrDenied, []string{"on deploy@web-1:2222: user deploy cannot open"}},
		{"no agent", StdioExit, StdioPrefix + "no-agent: no sprout agent answers on /run/sprout/sprout.sock\n", ErrNoAgent, []string{"on deploy@web-1:2222: no sprout agent answers"}},
		{"remote config", StdioExit, StdioPrefix + "failed: config file /etc/sprout/agent.yaml: bad\n", ErrRemote, []string{"config file"}},
		{"other exit", 2, "something odd\n", ErrSSH, []string{"exit status 2", "something odd", "ssh -p 2222 deploy@web-1 sprout dial-stdio"}},
	} {
		err := classify(s, tc.code, tc.stderr, false)
		if err == nil || !errors.Is(err, tc.kind) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.kind)
			continue
		}
		for _, w := range tc.says {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", tc.name, err, w)
			}
		}
		if strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("%s: more than one line: %q", tc.name, err)
		}
	}
	if err := classify(s, 0, "Warning: Permanently added 'web-1' (ED25519) to the list of known hosts.\n", false); err != nil {
		t.Errorf("a normal end: %v", err)
	}
	if err := classify(s, 255, "", true); !errors.Is(err, ErrSSH) || !strings.Contains(err.Error(), "connection to deploy@web-1:2222 broke") {
		t.Errorf("a session that broke after the host answered: %v", err)
	}
}

func TestReportStdio(t *testing.T) {
	var buf bytes.Buffer
	if code := ReportStdio(&buf, &Error{Kind: ErrDenied, Msg: "user x cannot\nopen it"}); code != StdioExit {
		t.Errorf("exit status %d", code)
	}
	if e := parseStdio(buf.String()); e == nil || e.Kind != ErrDenied || e.Msg != "user x cannot open it" {
		t.Errorf("%q read back as %#v", buf.String(), e)
	}
}

// fakeSSH is an "ssh" that runs script with sh, ignoring ssh's arguments.
func fakeSSH(script string) *SSH {
	return &SSH{Command: []string{"sh", "-c", script}, User: "deploy", Host: "web-1"}
}

func TestSSHConn(t *testing.T) {
	conn, err := fakeSSH("exec cat").Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "ping\n" {
		t.Fatalf("read %q, %v", b, err)
	}
	// Closing ends ssh's input, and cat ends.
	start := time.Now()
	conn.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %s", d)
	}

	// A failed session reads as the part that failed.
	conn, err = fakeSSH(`echo "deploy@web-1: Permission denied (publickey)." >&2; exit 255`).Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Read(b); !errors.Is(err, ErrAuth) {
		t.Errorf("read from a session that failed to log in: %v", err)
	}
	if _, err := (&SSH{Command: []string{"/nonexistent/ssh"}, Host: "web-1"}).Dial(context.Background()); !errors.Is(err, ErrSSH) || !strings.Contains(err.Error(), "SPROUT_SSH_COMMAND") {
		t.Errorf("no ssh client: %v", err)
	}
}

// TestSSHIgnoresSIGINT: Ctrl-C, which a terminal sends to ssh too, must
// reach only the CLI, which ends the session in order.
func TestSSHIgnoresSIGINT(t *testing.T) {
	conn, err := fakeSSH("exec grep SigIgn /proc/self/status").Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	out, _ := io.ReadAll(conn)
	var mask uint64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "SigIgn: %x", &mask); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	if mask&(1<<(int(syscall.SIGINT)-1)) == 0 {
		t.Errorf("ssh starts with SIGINT handled (SigIgn %x)", mask)
	}
}

func TestSSHConnCloseIsBounded(t *testing.T) {
	defer func(d time.Duration) { closeWait = d }(closeWait)
	closeWait = 200 * time.Millisecond
	// An ssh that outlives the end of its input is killed.
	conn, err := fakeSSH("exec sleep 30").Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	conn.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %s", d)
	}
}

// TestJoin: what dial-stdio copies, and the half-close that tells the
// agent the CLI is done.
func TestJoin(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		got, _ := io.ReadAll(c) // until the half-close
		c.Write(append(got, " bye"...))
		c.Close()
	}()
	conn, err := DialUnix(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- Join(conn, strings.NewReader("hello"), &out) }()
	select {
	case err := <-done:
		if err != nil || out.String() != "hello bye" {
			t.Errorf("Join: %q, %v", out.String(), err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Join did not end when the agent closed")
	}
}

func TestDialUnixFailures(t *testing.T) {
	dir := t.TempDir()
	if _, err := DialUnix(context.Background(), filepath.Join(dir, "none.sock")); !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), "start it with `sprout agent`") {
		t.Errorf("no socket: %v", err)
	}
	// A socket file left by an agent that died: refused.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := DialForStdio(context.Background(), stale); !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), "systemctl start sprout-agent") {
		t.Errorf("stale socket: %v", err)
	}
}

// TestDeniedMessage: who may not open the socket, and how to join the
// group that may (root opens any socket, so the mapping is tested on the
// message, and end to end in e2e/ssh_test.go as another user).
func TestDeniedMessage(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(sock, 0o660)
	if msg := deniedMessage(sock); !strings.Contains(msg, "mode 0660, group ") || !strings.Contains(msg, "sudo usermod -aG ") {
		t.Errorf("group socket: %s", msg)
	}
	os.Chmod(sock, 0o600)
	if msg := deniedMessage(sock); !strings.Contains(msg, "owner only") || !strings.Contains(msg, "socket_group") {
		t.Errorf("owner-only socket: %s", msg)
	}
	if os.Geteuid() != 0 {
		os.Chmod(sock, 0)
		if _, err := DialUnix(context.Background(), sock); !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "sudo") {
			t.Errorf("socket with no permissions: %v", err)
		}
	}
}

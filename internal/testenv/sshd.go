package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// SSHD is a throwaway OpenSSH server on loopback, for one test.
type SSHD struct {
	Port int
	// User is who logs in: the user the tests run as (sshd serves only
	// its own user unless it runs as root).
	User string
	// KnownHosts is a known_hosts file that lists the server's host key.
	KnownHosts string

	dir        string
	authorized string
}

// SSHServer starts Debian's sshd as the current user on a loopback port,
// with a generated host key, public-key logins only, and its own
// authorized_keys file (see Key), which may set the session's environment
// (PermitUserEnvironment). It stops when the test ends. Without
// openssh-server the test is skipped, except under CI, where it fails.
func SSHServer(t testing.TB) *SSHD {
	t.Helper()
	const sshd = "/usr/sbin/sshd" // sshd re-executes itself: an absolute path
	if _, err := os.Stat(sshd); err != nil {
		Missing(t, "OpenSSH's server is not installed", "scripts/ensure-test-deps.sh installs it as root: apt-get install openssh-server")
	}
	for _, bin := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(bin); err != nil {
			Missing(t, "OpenSSH's client is not installed", "scripts/ensure-test-deps.sh installs it as root: apt-get install openssh-client")
		}
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Where sshd's unprivileged child chroots; the package's systemd
		// unit makes it, and there is none here.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &SSHD{Port: FreePort(t), User: u.Username, dir: t.TempDir()}
	s.authorized = filepath.Join(s.dir, "authorized_keys")
	s.KnownHosts = filepath.Join(s.dir, "known_hosts")
	hostKey := keygen(t, filepath.Join(s.dir, "host_key"))
	writeFile(t, s.authorized, "", 0o600)
	writeFile(t, s.KnownHosts, fmt.Sprintf("[127.0.0.1]:%d %s", s.Port, hostKey), 0o600)
	cfg := filepath.Join(s.dir, "sshd_config")
	writeFile(t, cfg, strings.Join([]string{
		"ListenAddress 127.0.0.1",
		fmt.Sprintf("Port %d", s.Port),
		"HostKey " + filepath.Join(s.dir, "host_key"),
		"PidFile " + filepath.Join(s.dir, "sshd.pid"),
		"AuthorizedKeysFile " + s.authorized,
		"AuthenticationMethods publickey",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PermitRootLogin prohibit-password",
		"PermitUserEnvironment yes",
		"AllowUsers " + s.User,
		"LogLevel VERBOSE",
	}, "\n")+"\n", 0o600)

	log := &SyncBuffer{}
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", log)
		}
	})
	Eventually(t, 10*time.Second, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
		if err != nil {
			return fmt.Errorf("sshd does not listen on port %d: %v\n%s", s.Port, err, log)
		}
		return c.Close()
	})
	return s
}

// URL is the server as --host takes it.
func (s *SSHD) URL() string { return fmt.Sprintf("ssh://%s@127.0.0.1:%d", s.User, s.Port) }

// Key makes a key pair the server accepts, with authorized_keys options
// (such as `environment="PATH=/opt/bin:/usr/bin:/bin"`), and returns the
// private key's path.
func (s *SSHD) Key(t testing.TB, options ...string) string {
	t.Helper()
	key := NewSSHKey(t)
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	line := string(pub)
	if len(options) > 0 {
		line = strings.Join(options, ",") + " " + line
	}
	f, err := os.OpenFile(s.authorized, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		t.Fatal(err)
	}
	return key
}

// NewSSHKey makes a key pair (accepted by no server until Key) and returns
// the private key's path.
func NewSSHKey(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "id_ed25519")
	keygen(t, path)
	return path
}

// Command is an ssh command line, as SPROUT_SSH_COMMAND takes it, that logs
// in with key only and trusts only the host keys in s.KnownHosts, without
// reading anything of the user's ~/.ssh or asking anything.
func (s *SSHD) Command(key string) string {
	return strings.Join([]string{"ssh", "-F", "/dev/null", "-i", key,
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
		"-o", "UserKnownHostsFile=" + s.KnownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"}, " ")
}

// PrimaryGroup is the test user's primary group.
func PrimaryGroup(t testing.TB) *user.Group {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// keygen makes an ed25519 key pair at path (and path.pub) and returns the
// public key's line.
func keygen(t testing.TB, path string) string {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sprout-test", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(pub))
}

func writeFile(t testing.TB, path, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

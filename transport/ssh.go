package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SSH reaches an agent on another host: each connection is one run of the
// system's ssh client (so ~/.ssh/config, the agent, known_hosts and jump
// hosts work as the user has them) with `sprout dial-stdio` at the other
// end, and the connection is the process's stdin and stdout.
type SSH struct {
	// Command is the ssh client and its options: ["ssh"], or
	// SPROUT_SSH_COMMAND split into words.
	Command []string
	// User and Port may be empty: ssh's config decides.
	User, Host, Port string
}

// RemoteCommand is what ssh runs on the host.
var RemoteCommand = []string{"sprout", "dial-stdio"}

// How long a closed or broken connection waits for ssh to exit: closing
// waits for the remote side to end cleanly, then kills ssh; a broken one
// waits for ssh's exit status and message to say what failed.
var (
	closeWait = 5 * time.Second
	exitWait  = 5 * time.Second
)

// dest is ssh's destination: [user@]host.
func (s *SSH) dest() string {
	if s.User != "" {
		return s.User + "@" + s.Host
	}
	return s.Host
}

func (s *SSH) String() string {
	if s.Port != "" {
		return s.dest() + ":" + s.Port
	}
	return s.dest()
}

// hint is the plain ssh command that reaches the host, for messages.
func (s *SSH) hint() string {
	if s.Port != "" {
		return "ssh -p " + s.Port + " " + s.dest()
	}
	return "ssh " + s.dest()
}

// args is ssh's command line: the options of Command, no terminal, the
// port, then the destination and the remote command.
func (s *SSH) args() []string {
	args := append(slices.Clone(s.Command[1:]), "-T")
	if s.Port != "" {
		args = append(args, "-p", s.Port)
	}
	return append(append(args, "--", s.dest()), RemoteCommand...)
}

// Dial starts ssh. The connection is up at once; a failure to connect
// shows on its first read or write, as an *Error built from ssh's exit
// status and its message on stderr.
//
// ssh stays in the terminal's process group, so that it can ask for a
// passphrase or to accept a host key, but starts with SIGINT ignored
// (which ssh then keeps ignoring): Ctrl-C, which a terminal sends to the
// whole group, reaches only the CLI, which ends the session in order by
// closing ssh's stdin. dial-stdio on the host then ends the request on
// the agent, and nothing is cut half-way.
func (s *SSH) Dial(ctx context.Context) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(s.Command[0])
	if err != nil {
		return nil, &Error{Kind: ErrSSH, Msg: fmt.Sprintf("cannot run the ssh client %q (%v): install OpenSSH's client, or name yours in SPROUT_SSH_COMMAND", s.Command[0], err)}
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	c := &cmdConn{ssh: s, in: inW, out: outR, stderr: &tail{max: 8 << 10}, exited: make(chan struct{})}
	c.cmd = exec.Command("/bin/sh", append([]string{"-c", `trap "" INT; exec "$@"`, "sh", bin}, s.args()...)...)
	c.cmd.Stdin, c.cmd.Stdout, c.cmd.Stderr = inR, outW, c.stderr
	// A process ssh leaves behind (a ProxyCommand) must not hold Wait.
	c.cmd.WaitDelay = time.Second
	err = c.cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// cmdConn is a connection over an ssh process's stdin and stdout.
type cmdConn struct {
	ssh     *SSH
	cmd     *exec.Cmd
	in, out *os.File
	stderr  *tail
	// exited is closed when ssh has exited, and waitErr set.
	exited  chan struct{}
	waitErr error
	close   sync.Once
	// answered is set once the host sent a byte: the session was up.
	answered atomic.Bool
}

func (c *cmdConn) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if n > 0 {
		c.answered.Store(true)
	}
	if err == io.EOF {
		return n, c.ended(err)
	}
	return n, err
}

func (c *cmdConn) Write(p []byte) (int, error) {
	n, err := c.in.Write(p)
	if err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
		return n, c.ended(err)
	}
	return n, err
}

// ended returns why the session ended: an *Error when ssh or dial-stdio
// failed, else err.
func (c *cmdConn) ended(err error) error {
	select {
	case <-c.exited:
	case <-time.After(exitWait):
		return err
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(c.waitErr, &ee) {
		code = ee.ExitCode()
	}
	if f := classify(c.ssh, code, c.stderr.String(), c.answered.Load()); f != nil {
		return f
	}
	return err
}

// Close ends the session as the remote side expects: ssh's stdin closes,
// dial-stdio sees the end of its input and half-closes the agent's
// connection, the agent ends the request and closes, and ssh exits. What
// ssh still sends meanwhile is read and dropped. Past closeWait, ssh is
// killed.
func (c *cmdConn) Close() error {
	c.close.Do(func() {
		c.in.Close()
		go io.Copy(io.Discard, c.out)
		select {
		case <-c.exited:
		case <-time.After(closeWait):
			c.cmd.Process.Kill()
			<-c.exited
		}
		c.out.Close()
	})
	return nil
}

func (c *cmdConn) LocalAddr() net.Addr  { return sshAddr("sprout-cli") }
func (c *cmdConn) RemoteAddr() net.Addr { return sshAddr(c.ssh.String()) }

func (c *cmdConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *cmdConn) SetReadDeadline(t time.Time) error  { return c.out.SetReadDeadline(t) }
func (c *cmdConn) SetWriteDeadline(t time.Time) error { return c.in.SetWriteDeadline(t) }

type sshAddr string

func (a sshAddr) Network() string { return "ssh" }
func (a sshAddr) String() string  { return string(a) }

// offending finds where ssh keeps the old key of a host whose key changed.
var offending = regexp.MustCompile(`Offending \S+ key in (\S+):(\d+)`)

// classify says which part of an ssh session failed, from ssh's exit
// status and stderr and whether the host had answered, or returns nil when
// the session ended normally.
func classify(s *SSH, code int, stderr string, answered bool) *Error {
	if e := parseStdio(stderr); e != nil {
		e.Msg = fmt.Sprintf("on %s: %s", s, e.Msg)
		return e
	}
	said := sshSaid(stderr)
	host := s.Host
	if s.Port != "" {
		host = "[" + s.Host + "]:" + s.Port
	}
	switch {
	case strings.Contains(stderr, "REMOTE HOST IDENTIFICATION HAS CHANGED"):
		where := "known_hosts"
		if m := offending.FindStringSubmatch(stderr); m != nil {
			where = m[1] + " line " + m[2]
		}
		return &Error{Kind: ErrHostKey, Msg: fmt.Sprintf("the host key of %s changed since ssh last saw it (old key in %s): if the host was reinstalled, check the new key's fingerprint with its admin, then run `ssh-keygen -R '%s'` and connect once with ssh to accept it; otherwise someone may be intercepting the connection", s.Host, where, host)}
	case strings.Contains(stderr, "Host key verification failed"), strings.Contains(stderr, "host key is known for"):
		return &Error{Kind: ErrHostKey, Msg: fmt.Sprintf("ssh does not know the host key of %s (ssh: %s): connect once with `%s` to check the key and accept it", s.Host, said, s.hint())}
	case strings.Contains(stderr, "Permission denied (") || strings.Contains(stderr, "Too many authentication failures"):
		return &Error{Kind: ErrAuth, Msg: fmt.Sprintf("ssh could not log in to %s, authentication failed (ssh: %s): load the right key into ssh-agent (ssh-add) or pass it with SPROUT_SSH_COMMAND=\"ssh -i KEY\", and check that its public key is in the user's ~/.ssh/authorized_keys on the host", s, said)}
	case strings.Contains(stderr, `unknown command "dial-stdio"`):
		return &Error{Kind: ErrNotInstalled, Msg: fmt.Sprintf("sprout on %s is too old to be reached with --host (it has no dial-stdio): upgrade it there to this CLI's version", s)}
	case code == 127 || strings.Contains(stderr, "command not found") || strings.Contains(stderr, "sprout: not found"):
		return &Error{Kind: ErrNotInstalled, Msg: fmt.Sprintf("sprout is not installed on %s, or not on the PATH of the user's ssh sessions (%s): install it there, e.g. in /usr/local/bin", s, said)}
	case code == 255 && answered:
		return &Error{Kind: ErrSSH, Msg: fmt.Sprintf("the ssh connection to %s broke (ssh: %s): run the command again; if it keeps breaking, check the network, or try `%s` by hand", s, said, s.hint())}
	case code == 255:
		return &Error{Kind: ErrSSH, Msg: fmt.Sprintf("ssh could not connect to %s (ssh: %s): check the host name, port and network, then try `%s` by hand", s, said, s.hint())}
	case code != 0:
		return &Error{Kind: ErrSSH, Msg: fmt.Sprintf("the ssh session to %s ended with exit status %d (%s): try `%s %s` by hand", s, code, said, s.hint(), strings.Join(RemoteCommand, " "))}
	}
	return nil
}

// sshSaid is ssh's own message: the last line of its stderr that is not a
// notice or a banner of at-signs, without ssh's "ssh: ".
func sshSaid(stderr string) string {
	lines := strings.Split(stderr, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "@") || strings.HasPrefix(l, "Warning: Permanently added") {
			continue
		}
		return strings.TrimPrefix(l, "ssh: ")
	}
	return "no message"
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

var (
	_ Dialer   = (*SSH)(nil)
	_ net.Conn = (*cmdConn)(nil)
)

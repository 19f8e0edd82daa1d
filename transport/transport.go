// Package transport carries the API's connections to an agent: its unix
// socket on this host, or, for an agent on another host, the system's ssh
// client running `sprout dial-stdio` there. Every failure to connect is an
// *Error that says in one sentence which part failed, and the fix.
package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/google/shlex"
)

// The parts of a connection that can fail; an *Error wraps one of them.
var (
	// ErrNoAgent means nothing answers on the agent's socket.
	ErrNoAgent = errors.New("no sprout agent answers")
	// ErrDenied means the user may not open the agent's socket.
	ErrDenied = errors.New("permission denied on the agent's socket")
	// ErrSSH means ssh could not connect to the host, or the session
	// failed for a reason of its own.
	ErrSSH = errors.New("ssh could not connect")
	// ErrAuth means ssh reached the host but could not log in.
	ErrAuth = errors.New("ssh authentication failed")
	// ErrHostKey means the host's key is not the one ssh knows for it,
	// or ssh knows none and may not ask.
	ErrHostKey = errors.New("ssh host key verification failed")
	// ErrNotInstalled means the host has no `sprout` (with dial-stdio) on
	// the ssh session's PATH.
	ErrNotInstalled = errors.New("sprout is not installed on the host")
	// ErrRemote means `sprout dial-stdio` on the host failed for another
	// reason (its config, say); its message says which.
	ErrRemote = errors.New("sprout dial-stdio failed on the host")
)

// Error is a failure to reach the agent: Kind is the part that failed (one
// of the Err values), Msg the sentence for the user.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the part that failed.
func (e *Error) Unwrap() error { return e.Kind }

// Dialer opens connections to one agent's API.
type Dialer interface {
	// Dial opens one connection.
	Dial(ctx context.Context) (net.Conn, error)
	// String names the agent's address for messages.
	String() string
}

// Unix reaches the agent on this host through its socket.
type Unix struct{ Path string }

// Dial connects to the socket; a failure is an *Error.
func (u Unix) Dial(ctx context.Context) (net.Conn, error) { return DialUnix(ctx, u.Path) }

func (u Unix) String() string { return "unix://" + u.Path }

// ParseHost reads a --host value: ssh://[user@]host[:port], or
// unix:///path/to/sprout.sock. sshCommand replaces `ssh` (with its options)
// when not empty, split as a shell splits words (SPROUT_SSH_COMMAND).
func ParseHost(raw, sshCommand string) (Dialer, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "ssh" && u.Scheme != "unix") || u.Opaque != "" {
		return nil, fmt.Errorf("host %q: use ssh://[user@]host[:port] or unix:///path/to/sprout.sock", raw)
	}
	if u.Scheme == "unix" {
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("host %q: a unix host is an absolute path: unix:///run/sprout/sprout.sock", raw)
		}
		return Unix{Path: u.Path}, nil
	}
	if u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("host %q: use ssh://[user@]host[:port], without a path (the host's agent config says where its socket is)", raw)
	}
	if _, set := u.User.Password(); set {
		return nil, fmt.Errorf("host %q: ssh logs in with keys or its own prompt; leave the password out of the URL", raw)
	}
	cmd := []string{"ssh"}
	if sshCommand != "" {
		if cmd, err = shlex.Split(sshCommand); err != nil || len(cmd) == 0 {
			return nil, fmt.Errorf("SPROUT_SSH_COMMAND %q: cannot split it into a command and its arguments (%v)", sshCommand, err)
		}
	}
	return &SSH{Command: cmd, User: u.User.Username(), Host: u.Hostname(), Port: u.Port()}, nil
}

var _ Dialer = Unix{}

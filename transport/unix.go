package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// DialUnix connects the CLI to the agent's socket on this host; a failure
// is an *Error whose fix fits a user at this host's shell.
func DialUnix(ctx context.Context, path string) (net.Conn, error) {
	return dialSocket(ctx, path, fixes{
		noAgent: "start it with `sprout agent`, or point --socket / SPROUT_SOCKET at its socket",
		denied:  ", or run the command as the agent's user (sudo)",
	})
}

// DialForStdio connects `sprout dial-stdio` to the agent's socket; a
// failure is an *Error whose fix fits a user who reached this host
// through ssh.
func DialForStdio(ctx context.Context, path string) (net.Conn, error) {
	return dialSocket(ctx, path, fixes{
		noAgent: "start it there (`sudo systemctl start sprout-agent`), or, if it listens elsewhere, set socket in /etc/sprout/agent.yaml or SPROUT_SOCKET for ssh sessions there",
	})
}

// fixes are the ends of the sentences a socket's failures are said in.
type fixes struct{ noAgent, denied string }

func dialSocket(ctx context.Context, path string, fix fixes) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	switch {
	case err == nil:
		return conn, nil
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return nil, &Error{Kind: ErrNoAgent, Msg: fmt.Sprintf("%v on %s: %s", ErrNoAgent, path, fix.noAgent)}
	case errors.Is(err, os.ErrPermission):
		return nil, &Error{Kind: ErrDenied, Msg: deniedMessage(path) + fix.denied}
	}
	return nil, err
}

// deniedMessage says why this process's user cannot open the socket at
// path, and how to join the group that may.
func deniedMessage(path string) string {
	name := "this user"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Sprintf("user %s cannot reach the agent's socket %s: a directory on its way is closed to it (%v); make the directories traversable and set socket_group in the agent's config", name, path, err)
	}
	mode := st.Mode().Perm()
	group := "GROUP"
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		group = strconv.Itoa(int(sys.Gid))
		if g, err := user.LookupGroupId(group); err == nil {
			group = g.Name
		}
	}
	if mode&0o060 == 0o060 {
		return fmt.Sprintf("user %s cannot open the agent's socket %s (mode %04o, group %s): add the user to that group with `sudo usermod -aG %s %s` and log in again (the group's members have root's power over this host)", name, path, mode, group, group, name)
	}
	return fmt.Sprintf("user %s cannot open the agent's socket %s (mode %04o, owner only): set socket_group in the agent's config (/etc/sprout/agent.yaml) and restart it, then add the user to that group with `sudo usermod -aG GROUP %s` (the group's members have root's power over this host)", name, path, mode, name)
}

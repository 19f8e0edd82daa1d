package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// How `sprout dial-stdio` says it could not join the agent's socket, before
// any byte on stdout: one line on stderr that starts with StdioPrefix, then
// the kind (no-agent, denied or failed) and the sentence, and exit status
// StdioExit. The CLI at the other end of ssh turns that line into an *Error.
const (
	StdioPrefix = "sprout-dial-stdio: "
	StdioExit   = 3
)

// stdioKinds names the parts of a failure on the wire.
var stdioKinds = map[string]error{"no-agent": ErrNoAgent, "denied": ErrDenied}

// ReportStdio writes dial-stdio's failure line for err to w and returns the
// exit status to end with.
func ReportStdio(w io.Writer, err error) int {
	kind := "failed"
	for name, k := range stdioKinds {
		if errors.Is(err, k) {
			kind = name
		}
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Fprintf(w, "%s%s: %s\n", StdioPrefix, kind, msg)
	return StdioExit
}

// parseStdio finds dial-stdio's failure line in an ssh session's stderr,
// or returns nil.
func parseStdio(stderr string) *Error {
	for _, line := range strings.Split(stderr, "\n") {
		rest, found := strings.CutPrefix(strings.TrimSpace(line), StdioPrefix)
		if !found {
			continue
		}
		name, msg, _ := strings.Cut(rest, ": ")
		kind, known := stdioKinds[name]
		if !known {
			kind = ErrRemote
		}
		return &Error{Kind: kind, Msg: msg}
	}
	return nil
}

// Join copies stdin to the agent's connection and the connection to
// stdout, until the agent closes it or stdout fails. When stdin ends (the
// CLI closed its end of the ssh session), the agent is told by a
// half-close and ends the exchange: it stops what the request was doing
// and closes, so Join returns.
func Join(conn net.Conn, stdin io.Reader, stdout io.Writer) error {
	go func() {
		io.Copy(conn, stdin)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
			return
		}
		conn.Close()
	}()
	_, err := io.Copy(stdout, conn)
	conn.Close()
	return err
}

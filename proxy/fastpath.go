package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The client side of the fast path. Go's HTTP server spends more per
// request than the forwarding itself (a request object, a header map, a
// background reader goroutine and deadline changes per request). Plain
// HTTP/1.1 requests with no body or a Content-Length body, the bulk of web
// traffic, are read here straight from the connection's buffer and
// forwarded. Anything else (HTTP/1.0, chunked or Expect uploads, upgrades,
// odd or oversized heads) is handed, before a byte of it is consumed, to a
// regular net/http server for the rest of that connection.

// maxHead is the largest request head the fast path parses.
const maxHead = 8 << 10

// handoff is a net.Listener whose connections come from the fast path.
type handoff struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newHandoff(addr net.Addr) *handoff {
	return &handoff{ch: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoff) Close() error   { h.once.Do(func() { close(h.done) }); return nil }
func (h *handoff) Addr() net.Addr { return h.addr }

// give passes c to the net/http server, or closes it when shutting down.
func (h *handoff) give(c net.Conn) {
	select {
	case h.ch <- c:
	case <-h.done:
		c.Close()
	}
}

// handedConn is a connection the fast path handed to net/http, its first
// bytes being those the fast path had buffered. It gives net/http's side
// what the fast path does on its own:
//   - a request head that does not come in time gets 408 before the
//     connection closes (net/http closes without a word), and the head's
//     clock, started on the fast path, keeps running;
//   - net/http's own closing answers (431, a body over the limit) are not
//     lost to a reset while the client is still sending (lingerClose).
//
// It follows net/http's read deadlines to know what it is reading: with
// ReadTimeout unset, net/http clears the deadline once it has a request's
// head, sets one ahead (the idle timeout, then ReadHeaderTimeout once the
// next request's first bytes are in) to wait for the next head, and one in
// the past to stop a background read.
//
// Over TLS, net/http sees a handedConn, not the *tls.Conn it wraps, and
// would take its requests for plain ones: state carries the connection's
// TLS state to them (handedTLS).
type handedConn struct {
	net.Conn
	r     io.Reader
	app   string
	state *tls.ConnectionState

	mu sync.Mutex
	// waiting is set while the read deadline is ahead: net/http waits for
	// a request head or reads it.
	waiting bool
	// got counts the bytes read while waiting: a head under way.
	got int
	// headBy is when the fast path wanted the first head in (zero when it
	// had it whole); net/http's deadlines for that head do not go past it.
	headBy time.Time
}

func newHandedConn(c net.Conn, buffered []byte, app string, headBy time.Time) *handedConn {
	r := io.MultiReader(bytes.NewReader(append([]byte(nil), buffered...)), c)
	hc := &handedConn{Conn: c, r: r, app: app, waiting: true, headBy: headBy}
	if tc, ok := c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		hc.state = &st
	}
	return hc
}

// tlsStateKey keys a handed TLS connection's state in its requests'
// contexts.
type tlsStateKey struct{}

// handedTLS is net/http's ConnContext: it keeps the TLS state of a TLS
// connection the fast path handed over in the context of its requests,
// for ServeHTTP to set it as their TLS (X-Forwarded-Proto, HSTS).
func handedTLS(ctx context.Context, c net.Conn) context.Context {
	if hc, ok := c.(*handedConn); ok && hc.state != nil {
		return context.WithValue(ctx, tlsStateKey{}, hc.state)
	}
	return ctx
}

// handedTLSState returns what handedTLS kept in ctx, or nil.
func handedTLSState(ctx context.Context) *tls.ConnectionState {
	st, _ := ctx.Value(tlsStateKey{}).(*tls.ConnectionState)
	return st
}

func (c *handedConn) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.mu.Lock()
	if c.waiting {
		c.got += n
	}
	late := c.waiting && c.got > 0 && errors.Is(err, os.ErrDeadlineExceeded)
	c.mu.Unlock()
	if late {
		lateHead(c.Conn, bufio.NewWriterSize(c.Conn, 512), c.app)
	}
	return n, err
}

// NetConn returns the connection handed over (httpdrain.Unread looks at
// its socket).
func (c *handedConn) NetConn() net.Conn { return c.Conn }

func (c *handedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	ahead := !t.IsZero() && t.After(time.Now())
	if ahead && !c.waiting {
		c.got = 0 // a wait for the next request begins
	}
	c.waiting = ahead
	switch {
	case c.headBy.IsZero():
	case t.IsZero():
		c.headBy = time.Time{} // the first head is in
	case t.After(c.headBy):
		t = c.headBy
	}
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *handedConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

// CloseWrite is called by net/http before it closes after an answer of its
// own (431, a body over the limit), to let the client read it. It drops
// what the client still sends, for a while, so that closing does not reset
// the connection before the client has read the answer (linger).
func (c *handedConn) CloseWrite() error {
	linger(c.Conn)
	return nil
}

// lingerTime bounds how long a closing connection reads and drops what the
// client still sends (nginx's lingering_timeout).
const lingerTime = 5 * time.Second

// linger half-closes c after a final answer and reads and drops what the
// client still sends, until it closes its side or lingerTime passes. A
// connection closed with unread input is reset, and a client still
// sending (a body, or a head over the limit) may then never read the
// answer (RFC 9112, 9.6).
func linger(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(lingerTime))
	io.Copy(io.Discard, c)
}

// lingerClose closes c after a final answer, lingering first.
func lingerClose(c net.Conn) {
	linger(c)
	c.Close()
}

// lateHead answers a request whose head did not come within the header
// timeout with 408, on either client side, and closes the connection.
func lateHead(c net.Conn, bw *bufio.Writer, app string) {
	writeReply(bw, http.StatusRequestTimeout, "", errorBody(app, http.StatusRequestTimeout, "the request's headers took too long to arrive"), true)
	lingerClose(c)
}

// fastHead is a request head the fast path parsed.
type fastHead struct {
	request
	// closeAfter is set when the client said Connection: close.
	closeAfter bool
}

var errFallback = errors.New("not for the fast path")

// parseHead parses a request head (without the final empty line's CRLF)
// or says errFallback for anything the fast path does not take.
func parseHead(b []byte, h *fastHead) error {
	line, rest, ok := bytes.Cut(b, []byte("\r\n"))
	if !ok {
		return errFallback
	}
	sp1 := bytes.IndexByte(line, ' ')
	sp2 := bytes.LastIndexByte(line, ' ')
	if sp1 <= 0 || sp2 <= sp1+1 || string(line[sp2+1:]) != "HTTP/1.1" {
		return errFallback
	}
	for _, c := range line[:sp1] {
		if c < 'A' || c > 'Z' {
			return errFallback
		}
	}
	uri := line[sp1+1 : sp2]
	if uri[0] != '/' {
		return errFallback
	}
	for _, c := range uri {
		if c <= ' ' || c == 0x7f {
			return errFallback
		}
	}
	// Every field is the request's own but those of its connection, so
	// none can outlive it (its start, its HSTS).
	h.request = request{remote: h.remote, clientIP: h.clientIP, https: h.https, sni: h.sni, xff: h.xff[:0], fields: h.fields[:0],
		method: knownMethod(line[:sp1]), uri: string(uri)}
	h.closeAfter = false
	seenLength := false
	var named [][]byte
	var buf [64]byte
	for len(rest) > 0 {
		line, rest, ok = bytes.Cut(rest, []byte("\r\n"))
		if !ok || len(line) == 0 {
			return errFallback
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return errFallback
		}
		name, value := line[:colon], bytes.Trim(line[colon+1:], " \t")
		if !validField(name, value) {
			return errFallback
		}
		lower := lowerASCII(&buf, name)
		switch string(lower) {
		case "host":
			if h.host != "" {
				return errFallback
			}
			h.host = string(value)
		case "content-length":
			// Digits only, as RFC 9110 says: no sign, no spaces inside.
			n, err := strconv.ParseUint(string(value), 10, 62)
			if seenLength || err != nil {
				return errFallback
			}
			seenLength, h.length = true, int64(n)
		case "transfer-encoding", "expect", "upgrade":
			return errFallback
		case "connection":
			closeConn, others := connectionOptions(value)
			h.closeAfter = h.closeAfter || closeConn
			for _, tok := range others {
				if bytes.EqualFold(tok, []byte("upgrade")) {
					return errFallback
				}
			}
			named = append(named, others...)
		case "x-forwarded-for":
			if len(h.xff) > 0 {
				h.xff = append(h.xff, ", "...)
			}
			h.xff = append(h.xff, value...)
		}
		if requestDrop.lower[string(lower)] {
			continue
		}
		h.fields = append(h.fields, name...)
		h.fields = append(h.fields, ": "...)
		h.fields = append(h.fields, value...)
		h.fields = append(h.fields, "\r\n"...)
	}
	if h.host == "" {
		return errFallback
	}
	if len(named) > 0 {
		// Fields named in Connection are hop-by-hop too: rare, so the
		// lines are filtered again only then.
		h.fields = dropNamed(h.fields, named)
	}
	return nil
}

// lowerASCII returns b in lower case: in buf when it fits (header names
// do), so that comparing and looking it up allocates nothing.
func lowerASCII(buf *[64]byte, b []byte) []byte {
	out := buf[:0]
	if len(b) > len(buf) {
		out = make([]byte, 0, len(b))
	}
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 32
		}
		out = append(out, c)
	}
	return out
}

// knownMethods are the methods parseHead gives without allocating.
var knownMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions}

// knownMethod returns m as a string, without allocating for the usual
// methods.
func knownMethod(m []byte) string {
	for _, k := range knownMethods {
		if string(m) == k {
			return k
		}
	}
	return string(m)
}

// fastConn serves one client connection.
type fastConn struct {
	conn net.Conn
	// closing is the listener's: once set, each answer says
	// "Connection: close" and the connection closes after it.
	closing *atomic.Bool
	br      *bufio.Reader
	bw      *bufio.Writer
	head    fastHead
	body    io.LimitedReader
	// headBy is when the head being read must be in, once its wait is
	// the header timeout's; zero otherwise.
	headBy time.Time
	// deadline is the read deadline set on conn, zero for none.
	deadline time.Time
	// st is the connection's state for a shutdown: busy from a
	// request's first byte until its answer.
	st *connState
}

// readBy moves the connection's read deadline (moveDeadline).
func (fc *fastConn) readBy(t time.Time, slack time.Duration) {
	moveDeadline(fc.conn, &fc.deadline, t, slack)
}

// moveDeadline sets c's read deadline to t (zero: none), *set being the
// one set now, unless that one is at most slack before t: moving a
// deadline costs on every request, and a timeout of minutes may well end a
// second early.
func moveDeadline(c net.Conn, set *time.Time, t time.Time, slack time.Duration) {
	if d := *set; t.IsZero() && d.IsZero() || !t.IsZero() && !d.IsZero() && !d.After(t) && t.Sub(d) <= slack {
		return
	}
	*set = t
	c.SetReadDeadline(t)
}

// serveConn runs the fast path on c, a plain connection or a TLS one
// whose handshake is done, until the client closes it, it must close, or
// a request must go to the fallback server. st is c's state in l.conns.
func (l *listener) serveConn(c net.Conn, st *connState) {
	fc := &fastConn{conn: c, closing: &l.closing, st: st}
	fc.head.remote = c.RemoteAddr().String()
	fc.head.clientIP, _, _ = net.SplitHostPort(fc.head.remote)
	if tc, ok := c.(*tls.Conn); ok {
		fc.head.https, fc.head.sni = true, tc.ConnectionState().ServerName
	}
	fc.br = bufioReaders.Get().(*bufio.Reader)
	fc.br.Reset(c)
	fc.bw = bufioWriters.Get().(*bufio.Writer)
	fc.bw.Reset(c)
	handedOff := false
	defer func() {
		l.conns.Delete(c)
		if !handedOff {
			c.Close()
		}
		fc.br.Reset(nil)
		bufioReaders.Put(fc.br)
		fc.bw.Reset(nil)
		bufioWriters.Put(fc.bw)
	}()
	now := time.Now()
	for first := true; ; first = false {
		n, err := fc.readHead(&l.p.opts, first, now)
		if err == nil && l.challenge(fc.head.uri) {
			err = errFallback // Options.Certificates answers it, through net/http
		}
		switch {
		case errors.Is(err, errFallback):
			// Hand the connection, unread bytes first, to net/http.
			buffered, _ := fc.br.Peek(fc.br.Buffered())
			hc := newHandedConn(c, buffered, l.app(), fc.headBy)
			fc.readBy(time.Time{}, 0)
			handedOff = true
			l.handoff.give(hc)
			return
		case errors.Is(err, os.ErrDeadlineExceeded) && fc.br.Buffered() > 0:
			// A request began and its head did not come in time. (A
			// connection that sent nothing is closed without a word.)
			lateHead(c, fc.bw, l.app())
			return
		case err != nil:
			return
		}
		if fc.head.length > 0 {
			// The body is read while the request is forwarded, for as
			// long as it takes. (Without one, nothing reads c until the
			// next head, whose wait sets a deadline of its own: the head's
			// may stay.)
			fc.readBy(time.Time{}, 0)
		}
		fc.br.Discard(n)
		fc.body = io.LimitedReader{R: fc.br, N: fc.head.length}
		fc.head.body = &fc.body
		keep := l.dispatch(context.Background(), &fc.head.request, fc)
		now = time.Now()
		st.idleAt(now)
		if fc.body.N > 0 {
			// A body not read to its end leaves the connection
			// mid-request, and the client perhaps still sending it.
			lingerClose(c)
			return
		}
		if !keep || fc.head.closeAfter {
			return
		}
	}
}

// readHead waits for a whole request head in the buffer and parses it,
// returning its length; nothing is consumed. As in net/http, the wait for
// a request's first byte is bounded by the idle timeout, or, for the
// connection's first request, by the header timeout; from that byte on,
// the header timeout bounds the rest of the head. The common head comes
// whole in one read: then no further deadline is set. now is about the
// current time.
func (fc *fastConn) readHead(opts *Options, first bool, now time.Time) (int, error) {
	wait := opts.IdleTimeout
	if first {
		wait = opts.HeaderTimeout
	}
	if fc.closing.Load() {
		// The listener closes: a client that sends nothing soon is
		// done with this connection.
		wait = min(wait, closeIdleAfter)
	}
	deadline := now.Add(wait)
	fc.readBy(deadline, wait/64)
	fc.headBy = time.Time{}
	if _, err := fc.br.Peek(1); err != nil {
		return 0, err
	}
	// A request began: the bytes are out of the socket, so a shutdown
	// must see the connection busy from now on, not idle.
	fc.st.busy()
	b, _ := fc.br.Peek(fc.br.Buffered())
	if n := headEnd(b); n >= 0 {
		b = b[:n]
	} else {
		if first {
			fc.headBy = deadline // counted from the connection's start
		} else {
			fc.headBy = time.Now().Add(opts.HeaderTimeout)
			fc.readBy(fc.headBy, 0)
		}
		var err error
		if b, err = peekHeadBytes(fc.br); err != nil {
			return 0, err
		}
	}
	// Only heads whose every line ends in CRLF are the fast path's: a
	// bare LF (which net/http accepts) or an oversized head (nil) goes to
	// net/http.
	if b == nil || !bytes.HasSuffix(b, []byte("\r\n\r\n")) {
		return 0, errFallback
	}
	if err := parseHead(b[:len(b)-2], &fc.head); err != nil {
		return 0, err
	}
	return len(b), nil
}

// reply writes an answer of the proxy's own.
func (fc *fastConn) reply(status int, fields, body string) {
	fc.head.closeAfter = fc.head.closeAfter || fc.closing.Load()
	writeReply(fc.bw, status, fields, body, status == http.StatusRequestEntityTooLarge || fc.head.closeAfter || fc.body.N > 0)
}

// writeReply writes an answer of the proxy's own to bw, with fields
// (header lines) besides the usual ones, and flushes it; closing says the
// connection closes after it.
func writeReply(bw *bufio.Writer, status int, fields, body string, closing bool) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\n")
	bw.WriteString(replyFields(status))
	bw.WriteString(fields)
	bw.WriteString("Content-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	if closing {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	bw.WriteString(body)
	bw.Flush()
}

// respond writes the app's response: its head as it came, less the
// hop-by-hop fields, and its body, re-chunked when its length is unknown.
func (fc *fastConn) respond(_ *request, resp *response, _ *upConn) (int64, error) {
	bw := fc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.Write(resp.statusLine)
	bw.WriteString("\r\n")
	bw.Write(resp.fields)
	chunked := false
	switch {
	case resp.length >= 0 && resp.status != http.StatusNoContent:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(resp.length, 10))
		bw.WriteString("\r\n")
	case !resp.noBody:
		chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if fc.head.closeAfter || fc.closing.Load() {
		// The client said so, or the listener closes: the loop in
		// serveConn ends after this answer.
		fc.head.closeAfter = true
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	var n int64
	var err error
	if !resp.noBody {
		var flush func() error
		if resp.stream {
			flush = bw.Flush
		}
		n, err = copyBody(bw, resp.body, chunked, flush)
	}
	if err == nil {
		err = bw.Flush()
	}
	return n, err
}

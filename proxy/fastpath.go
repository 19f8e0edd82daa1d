package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
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

// replayConn is a connection whose first bytes were already buffered.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }

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
	h.method, h.uri = string(line[:sp1]), string(uri)
	h.host, h.length, h.closeAfter, h.xff, h.fields = "", 0, false, h.xff[:0], h.fields[:0]
	seenLength := false
	var named [][]byte
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
		lower := lowerASCII(name)
		switch lower {
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
		if requestDrop.lower[lower] {
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

func lowerASCII(b []byte) string {
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			out := make([]byte, len(b))
			for i, c := range b {
				if 'A' <= c && c <= 'Z' {
					c += 32
				}
				out[i] = c
			}
			return string(out)
		}
	}
	return string(b)
}

// fastConn serves one client connection.
type fastConn struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	head fastHead
	body io.LimitedReader
}

// serveConn runs the fast path on c until the client closes it, it must
// close, or a request must go to the fallback server.
func (l *listener) serveConn(c net.Conn) {
	s := l.service
	fc := &fastConn{conn: c}
	fc.head.remote = c.RemoteAddr().String()
	fc.head.clientIP, _, _ = net.SplitHostPort(fc.head.remote)
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
	for {
		if l.closing.Load() {
			return
		}
		c.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		n, err := fc.peekHead()
		if err != nil {
			if errors.Is(err, errFallback) {
				// Hand the connection, unread bytes first, to net/http.
				buffered, _ := fc.br.Peek(fc.br.Buffered())
				rc := &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(append([]byte(nil), buffered...)), c)}
				c.SetReadDeadline(time.Time{})
				handedOff = true
				l.handoff.give(rc)
			}
			return
		}
		c.SetReadDeadline(time.Time{})
		l.conns.Store(c, true) // active
		fc.br.Discard(n)
		fc.body = io.LimitedReader{R: fc.br, N: fc.head.length}
		fc.head.body = &fc.body
		keep := s.serve(context.Background(), &fc.head.request, fc)
		l.conns.Store(c, false) // idle
		// A body not read to its end leaves the connection mid-request.
		if !keep || fc.body.N > 0 || fc.head.closeAfter {
			return
		}
	}
}

// peekHead waits for a whole request head in the buffer and parses it,
// returning its length. Nothing is consumed.
func (fc *fastConn) peekHead() (int, error) {
	b, err := peekHeadBytes(fc.br)
	if err != nil {
		return 0, err
	}
	if b == nil {
		return 0, errFallback
	}
	if err := parseHead(b[:len(b)-2], &fc.head); err != nil {
		return 0, err
	}
	return len(b), nil
}

// reply writes an answer of the proxy's own.
func (fc *fastConn) reply(status int, body string) {
	bw := fc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\n")
	bw.WriteString(replyFields(status))
	bw.WriteString("Content-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	if status == http.StatusRequestEntityTooLarge || fc.head.closeAfter || fc.body.N > 0 {
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
	if fc.head.closeAfter {
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

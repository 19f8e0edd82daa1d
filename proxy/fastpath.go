package proxy

import (
	"bufio"
	"bytes"
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

// fastHead is a parsed request head.
type fastHead struct {
	method, uri, host string
	contentLength     int64
	closeAfter        bool
	xff               []byte // prior X-Forwarded-For values, comma-joined
	// fwd holds the header lines to forward, each "Name: value\r\n".
	fwd []byte
}

var errFallback = errors.New("not for the fast path")

// tokenChar marks the bytes allowed in a header name (RFC 9110 tchar).
var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-32] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

// dropHeaders are not forwarded by the fast path: hop-by-hop ones, those
// the proxy sets, and Host and Content-Length, which it writes itself.
var dropHeaders = map[string]bool{
	"connection": true, "proxy-connection": true, "keep-alive": true, "proxy-authenticate": true,
	"proxy-authorization": true, "te": true, "trailer": true, "upgrade": true,
	"x-forwarded-host": true, "x-forwarded-proto": true, "host": true, "content-length": true,
}

// parseHead parses a request head (without the final empty line's CRLF
// handling left to the caller) or says errFallback for anything the fast
// path does not take.
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
	h.host, h.contentLength, h.closeAfter, h.xff, h.fwd = "", 0, false, h.xff[:0], h.fwd[:0]
	seenLength := false
	var hop [][]byte
	start := len(h.fwd)
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
			seenLength, h.contentLength = true, int64(n)
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
			hop = append(hop, others...)
		case "x-forwarded-for":
			if len(h.xff) > 0 {
				h.xff = append(h.xff, ", "...)
			}
			h.xff = append(h.xff, value...)
		}
		if dropHeaders[lower] || lower == "x-forwarded-for" {
			continue
		}
		h.fwd = append(h.fwd, name...)
		h.fwd = append(h.fwd, ": "...)
		h.fwd = append(h.fwd, value...)
		h.fwd = append(h.fwd, "\r\n"...)
	}
	if h.host == "" {
		return errFallback
	}
	if len(hop) > 0 {
		// Headers named in Connection are hop-by-hop too: rare, so the
		// lines are filtered again only then.
		h.fwd = filterLines(h.fwd[start:], hop)
	}
	return nil
}

// connectionOptions reads a Connection header's value: whether it says
// close, and the other tokens (keep-alive aside), which name hop-by-hop
// headers or ask for an upgrade.
func connectionOptions(value []byte) (closeConn bool, others [][]byte) {
	for _, tok := range bytes.Split(value, []byte(",")) {
		tok = bytes.TrimSpace(tok)
		switch {
		case bytes.EqualFold(tok, []byte("close")):
			closeConn = true
		case len(tok) > 0 && !bytes.EqualFold(tok, []byte("keep-alive")):
			others = append(others, tok)
		}
	}
	return closeConn, others
}

// validField tells whether a header line is one the fast path forwards
// as it is: a token name and a value without control characters.
func validField(name, value []byte) bool {
	for _, c := range name {
		if !tokenChar[c] {
			return false
		}
	}
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// peekHeadBytes waits until br's buffer holds a whole head (through the
// empty line) and returns it without consuming it. It returns nil, nil when
// the head is larger than maxHead.
func peekHeadBytes(br *bufio.Reader) ([]byte, error) {
	want := 1
	for {
		p, err := br.Peek(want)
		if err != nil {
			if len(p) > 0 && errors.Is(err, bufio.ErrBufferFull) {
				return nil, nil
			}
			return nil, err
		}
		b, _ := br.Peek(br.Buffered())
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			return b[:i+4], nil
		}
		if len(b) >= maxHead {
			return nil, nil
		}
		want = len(b) + 1
	}
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

func filterLines(lines []byte, drop [][]byte) []byte {
	var out []byte
	for len(lines) > 0 {
		line, rest, _ := bytes.Cut(lines, []byte("\r\n"))
		lines = rest
		name, _, _ := bytes.Cut(line, []byte(":"))
		skip := false
		for _, d := range drop {
			skip = skip || bytes.EqualFold(name, d)
		}
		if !skip {
			out = append(out, line...)
			out = append(out, "\r\n"...)
		}
	}
	return out
}

// fastConn serves one client connection.
type fastConn struct {
	s      *Service
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	remote string
	ip     string
	head   fastHead
	resp   fastResp
	req    http.Request // reused for http.ReadResponse
}

// serveConn runs the fast path on c until the client closes it, it must
// close, or a request must go to the fallback server.
func (l *listener) serveConn(c net.Conn) {
	s := l.service
	fc := &fastConn{s: s, conn: c, remote: c.RemoteAddr().String()}
	fc.ip, _, _ = net.SplitHostPort(fc.remote)
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
		keep := fc.serve()
		l.conns.Store(c, false) // idle
		if !keep || fc.head.closeAfter {
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

// serve forwards the parsed request and writes the response. It returns
// whether the connection can carry another request.
func (fc *fastConn) serve() bool {
	s, h := fc.s, &fc.head
	start := time.Now()
	s.obs.Start()
	status, written, target, keep := fc.forward()
	took := time.Since(start)
	s.obs.Done(h.method, status, took, written)
	if s.opts.AccessLog {
		s.logRequest(h.method, h.uri, h.host, fc.remote, status, written, target, took)
	}
	return keep
}

func (fc *fastConn) forward() (status int, written int64, target string, keep bool) {
	s, h := fc.s, &fc.head
	if s.opts.MaxBodyBytes > 0 && h.contentLength > s.opts.MaxBodyBytes {
		return fc.writeError(http.StatusRequestEntityTooLarge, "request body too large"), 0, "", false
	}
	t := s.pick()
	if t == nil {
		s.obs.UpstreamError("no_target")
		return fc.writeError(http.StatusServiceUnavailable, "no version of this app is serving yet"), 0, "", h.contentLength == 0
	}
	streaming := false
	defer func() { t.releaseStream(streaming) }()
	target = t.addr

	var uc *upConn
	var resp *http.Response
	var err error
	for attempt := 0; ; attempt++ {
		uc = nil
		if attempt == 0 {
			uc = t.pool.get()
		}
		reused := uc != nil
		if uc == nil {
			if uc, err = t.dialConn(); err != nil {
				return fc.upstreamError(t, err), 0, target, h.contentLength == 0
			}
		}
		resp, err = fc.send(uc)
		if err == nil {
			break
		}
		uc.close()
		var berr *bodyError
		if errors.As(err, &berr) {
			return StatusClientClosedRequest, 0, target, false
		}
		if reused && attempt == 0 && h.contentLength == 0 && isClosedConnErr(err) {
			continue
		}
		return fc.upstreamError(t, err), 0, target, false
	}
	if resp == nil {
		written, err = fc.relayFast(t, uc, &fc.resp)
		return fc.resp.status, written, target, err == nil
	}

	// The response head.
	bw := fc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(resp.Status)
	bw.WriteString("\r\n")
	writeFields(bw, resp.Header, contentLength)
	noBody := h.method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	chunked := false
	switch {
	case resp.ContentLength >= 0 && (resp.StatusCode != http.StatusNoContent):
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(resp.ContentLength, 10))
		bw.WriteString("\r\n")
	case !noBody:
		chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if h.closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")

	streaming = chunked || isEventStream(resp.Header.Get("Content-Type"))
	if streaming {
		t.streams.Add(1)
	}
	written, err = fc.copyBody(resp.Body, noBody, chunked, streaming)
	resp.Body.Close()
	t.releaseConn(uc, err == nil && !resp.Close)
	if err == nil {
		err = bw.Flush()
	}
	return resp.StatusCode, written, target, err == nil
}

// send writes the request to the app and reads the response head: into
// fc.resp when it is simple (the returned response is nil then), else with
// http.ReadResponse.
func (fc *fastConn) send(uc *upConn) (*http.Response, error) {
	s, h, bw := fc.s, &fc.head, uc.bw
	bw.WriteString(h.method)
	bw.WriteByte(' ')
	bw.WriteString(h.uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(h.host)
	bw.WriteString("\r\n")
	bw.Write(h.fwd)
	bw.WriteString("X-Forwarded-For: ")
	if len(h.xff) > 0 {
		bw.Write(h.xff)
		bw.WriteString(", ")
	}
	bw.WriteString(fc.ip)
	bw.WriteString("\r\nX-Forwarded-Host: ")
	bw.WriteString(h.host)
	bw.WriteString("\r\nX-Forwarded-Proto: http\r\n")
	if h.contentLength > 0 || h.method == http.MethodPost || h.method == http.MethodPut || h.method == http.MethodPatch {
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(h.contentLength, 10))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	if h.contentLength > 0 {
		n, err := io.CopyN(bw, fc.br, h.contentLength)
		if err != nil {
			if n < h.contentLength {
				return nil, &bodyError{err}
			}
			return nil, &writeError{err}
		}
	}
	if err := bw.Flush(); err != nil {
		return nil, &writeError{err}
	}
	if s.opts.UpstreamTimeout > 0 {
		uc.conn.SetReadDeadline(time.Now().Add(s.opts.UpstreamTimeout))
	}
	if h.method != http.MethodHead {
		ok, err := fc.readFastResponse(uc, &fc.resp)
		if err != nil {
			return nil, err
		}
		if ok {
			if s.opts.UpstreamTimeout > 0 {
				uc.conn.SetReadDeadline(time.Time{})
			}
			return nil, nil
		}
	}
	fc.req.Method = h.method
	for {
		resp, err := http.ReadResponse(uc.br, &fc.req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				return nil, errors.New("the app switched protocols without being asked")
			}
			continue
		}
		if s.opts.UpstreamTimeout > 0 {
			uc.conn.SetReadDeadline(time.Time{})
		}
		return resp, nil
	}
}

// copyBody writes the response body to the client, re-chunked when its
// length is unknown, flushed as it comes when it streams.
func (fc *fastConn) copyBody(body io.Reader, noBody, chunked, streaming bool) (int64, error) {
	bw := fc.bw
	if noBody {
		return 0, nil
	}
	buf := buffers.Get()
	defer buffers.Put(buf)
	var total int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			total += int64(n)
			if chunked {
				bw.WriteString(strconv.FormatInt(int64(n), 16))
				bw.WriteString("\r\n")
			}
			if _, err := bw.Write(buf[:n]); err != nil {
				return total, err
			}
			if chunked {
				bw.WriteString("\r\n")
			}
			if streaming {
				if err := bw.Flush(); err != nil {
					return total, err
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return total, rerr
		}
	}
	if chunked {
		bw.WriteString("0\r\n\r\n")
	}
	return total, nil
}

// upstreamError answers a request the app could not serve, with the same
// status mapping as the net/http path.
func (fc *fastConn) upstreamError(t *Target, err error) int {
	status, msg := classify(t, err)
	fc.s.upstreamError(status, err)
	return fc.writeError(status, msg)
}

func (fc *fastConn) writeError(status int, msg string) int {
	body := errorBody(fc.s.app, status, msg)
	bw := fc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	if status == http.StatusServiceUnavailable {
		bw.WriteString("\r\nRetry-After: 1")
	}
	if status == http.StatusRequestEntityTooLarge || fc.head.closeAfter {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	bw.WriteString(body)
	bw.Flush()
	return status
}

// fastResp is a response head read without net/http: the common case of a
// Content-Length body.
type fastResp struct {
	status        int
	statusLine    []byte // "200 OK"
	headers       []byte // forwarded lines, each ending in CRLF
	contentLength int64
	close         bool
}

// dropResponseHeaders are not forwarded to the client.
var dropResponseHeaders = map[string]bool{
	"connection": true, "proxy-connection": true, "keep-alive": true, "proxy-authenticate": true,
	"te": true, "trailer": true, "upgrade": true, "content-length": true,
}

// readFastResponse parses the response head in uc's buffer when it is
// simple enough (HTTP/1.1, a final status with a body, one Content-Length,
// no Transfer-Encoding, no event stream). It consumes nothing and returns
// false otherwise, for http.ReadResponse to take over.
func (fc *fastConn) readFastResponse(uc *upConn, r *fastResp) (bool, error) {
	b, err := peekHeadBytes(uc.br)
	if b == nil || err != nil {
		return false, err
	}
	line, rest, _ := bytes.Cut(b, []byte("\r\n"))
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return false, nil
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified {
		return false, nil
	}
	r.status, r.statusLine, r.headers, r.contentLength, r.close = code, append(r.statusLine[:0], line[9:]...), r.headers[:0], -1, false
	for {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return false, nil
		}
		name, value := line[:colon], bytes.Trim(line[colon+1:], " \t")
		if !validField(name, value) {
			return false, nil
		}
		switch lower := lowerASCII(name); lower {
		case "transfer-encoding":
			return false, nil
		case "content-length":
			n, err := strconv.ParseUint(string(value), 10, 62)
			if err != nil || r.contentLength >= 0 {
				return false, nil
			}
			r.contentLength = int64(n)
			continue
		case "content-type":
			if isEventStream(string(value)) {
				return false, nil
			}
		case "connection":
			closeConn, others := connectionOptions(value)
			if len(others) > 0 {
				return false, nil // names other hop-by-hop headers: let net/http sort it out
			}
			r.close = r.close || closeConn
			continue
		default:
			if dropResponseHeaders[lower] {
				continue
			}
		}
		r.headers = append(r.headers, line...)
		r.headers = append(r.headers, "\r\n"...)
	}
	if r.contentLength < 0 {
		return false, nil
	}
	uc.br.Discard(len(b))
	return true, nil
}

// relayFast writes a fast response to the client, copying its body
// straight from the app's buffer.
func (fc *fastConn) relayFast(t *Target, uc *upConn, r *fastResp) (int64, error) {
	bw := fc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.Write(r.statusLine)
	bw.WriteString("\r\n")
	bw.Write(r.headers)
	bw.WriteString("Content-Length: ")
	bw.WriteString(strconv.FormatInt(r.contentLength, 10))
	if fc.head.closeAfter {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	n, err := io.CopyN(bw, uc.br, r.contentLength)
	t.releaseConn(uc, err == nil && !r.close)
	if err == nil {
		err = bw.Flush()
	}
	return n, err
}

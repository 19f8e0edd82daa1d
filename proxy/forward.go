package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// The one forwarding path. Two client sides read requests: the fast path
// (fastpath.go) parses plain HTTP/1.1 straight from the connection, and
// net/http (client.go) takes everything else. Both turn what they read into
// a request and hand it to Service.serve, which chooses the target, writes
// the request upstream, reads the response, retries, classifies failures,
// and accounts for the request. A client side only moves bytes: it writes
// the response or the proxy's own reply the way its connection needs.

// request is one request to forward, whichever client side read it.
type request struct {
	method, uri, host string
	// fields are the client's header lines to forward, each
	// "Name: value\r\n", without hop-by-hop ones and those the proxy
	// writes itself (fieldsToDrop).
	fields []byte
	// xff holds earlier X-Forwarded-For values, comma-joined.
	xff      []byte
	clientIP string
	remote   string
	https    bool
	// sni is the TLS connection's server name, "" on plain HTTP.
	sni string
	// hsts is the Strict-Transport-Security value to add to the
	// response, when the app's own response has none.
	hsts string
	// length is the body's length; -1 means unknown (sent chunked).
	length int64
	body   io.Reader
	// upgrade is the protocol the client asks to switch to (websocket),
	// or "".
	upgrade string
	// start is when Service.serve took the request, zero for one the
	// proxy answers itself. Clock reads cost on every request: its
	// duration and its access-log line take their times from its start
	// and its end.
	start time.Time
}

// response is a response head read from the app, and its body.
type response struct {
	status     int
	statusLine []byte // "200 OK"
	// fields are the header lines to pass to the client, each
	// "Name: value\r\n", without hop-by-hop ones and Content-Length.
	fields []byte
	// length is the body's length; -1 means unknown (until the app
	// closes or ends its chunks).
	length int64
	// noBody is set for HEAD requests, 1xx, 204 and 304: the head is
	// all there is, whatever its Content-Length says.
	noBody bool
	// stream marks bodies that must be flushed as they come (event
	// streams, unknown lengths): the drain treats them as streams.
	stream bool
	// close means the app's connection cannot carry another request.
	close bool
	body  io.Reader
	raw   *http.Response // when net/http's parser read the head
	lr    io.LimitedReader
}

// client is one of the two client sides. It only moves bytes.
type client interface {
	// reply writes an answer of the proxy's own (an error or a
	// redirect), with fields (header lines) besides the usual ones.
	reply(status int, fields, body string)
	// respond writes the app's response to the client and returns the
	// body bytes written. An error means the response was cut: the
	// client's connection must not carry another request.
	respond(req *request, resp *response, uc *upConn) (int64, error)
}

// fieldSet is a set of header field names, looked up by their lowercase
// form (raw header lines) or their canonical form (http.Header keys).
type fieldSet struct{ lower, canonical map[string]bool }

func newFieldSet(names ...string) fieldSet {
	s := fieldSet{lower: map[string]bool{}, canonical: map[string]bool{}}
	for _, n := range names {
		s.lower[strings.ToLower(n)] = true
		s.canonical[textproto.CanonicalMIMEHeaderKey(n)] = true
	}
	return s
}

// hopByHop fields belong to one connection (RFC 9110, 7.6.1) and are
// never forwarded, in either direction; neither are those a Connection
// header names.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

var (
	// requestDrop: hop-by-hop fields, the ones the proxy writes itself
	// (Host, Content-Length, X-Forwarded-*), and Expect, which the client
	// side already answered.
	requestDrop = newFieldSet(append([]string{"Host", "Content-Length", "Expect", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}, hopByHop...)...)
	// responseDrop: hop-by-hop fields and Content-Length, which the
	// client side writes from response.length.
	responseDrop = newFieldSet(append([]string{"Content-Length"}, hopByHop...)...)
)

// validField tells whether a header line may be forwarded as it is: a
// token name and a value without control characters.
func validField(name, value []byte) bool {
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if !tokenChar[c] {
			return false
		}
	}
	return plainText(value)
}

// plainText tells whether b holds no control characters but tabs: no
// line break that could start another header line.
func plainText(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

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

// appendFields appends h's fields as header lines, leaving out drop's,
// those h's Connection header names, and any that could not be forwarded
// safely.
func appendFields(dst []byte, h http.Header, drop fieldSet) []byte {
	named := connectionTokens(h["Connection"])
	for k, vs := range h {
		if drop.canonical[k] || named[k] {
			continue
		}
		for _, v := range vs {
			if !validField([]byte(k), []byte(v)) {
				continue
			}
			dst = append(dst, k...)
			dst = append(dst, ": "...)
			dst = append(dst, v...)
			dst = append(dst, "\r\n"...)
		}
	}
	return dst
}

// connectionTokens lists, canonically, the fields that Connection headers
// name (keep-alive and close are options, not fields).
func connectionTokens(values []string) map[string]bool {
	if len(values) == 0 {
		return nil
	}
	out := map[string]bool{}
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			if p := strings.TrimSpace(part); p != "" {
				out[textproto.CanonicalMIMEHeaderKey(p)] = true
			}
		}
	}
	return out
}

// connectionOptions reads a raw Connection header's value: whether it
// says close, and the other tokens (keep-alive aside), which name
// hop-by-hop fields or ask for an upgrade.
func connectionOptions(value []byte) (closeConn bool, others [][]byte) {
	for tok := range bytes.SplitSeq(value, []byte(",")) {
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

// dropNamed removes from lines (each "Name: value\r\n") those whose name
// is one of names: the fields a Connection header made hop-by-hop.
func dropNamed(lines []byte, names [][]byte) []byte {
	out := lines[:0:0]
	for len(lines) > 0 {
		line, rest, _ := bytes.Cut(lines, []byte("\r\n"))
		lines = rest
		name, _, _ := bytes.Cut(line, []byte(":"))
		drop := false
		for _, n := range names {
			drop = drop || bytes.EqualFold(name, n)
		}
		if !drop {
			out = append(out, line...)
			out = append(out, "\r\n"...)
		}
	}
	return out
}

// writeRequest writes req's head and body to the app. It is the one place
// that decides which headers the app sees.
func writeRequest(bw *bufio.Writer, req *request) error {
	bw.WriteString(req.method)
	bw.WriteByte(' ')
	bw.WriteString(req.uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.host)
	bw.WriteString("\r\n")
	bw.Write(req.fields)
	if req.clientIP != "" {
		// Appended to, as nginx does.
		bw.WriteString("X-Forwarded-For: ")
		if len(req.xff) > 0 {
			bw.Write(req.xff)
			bw.WriteString(", ")
		}
		bw.WriteString(req.clientIP)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-Host: ")
	bw.WriteString(req.host)
	if req.https {
		bw.WriteString("\r\nX-Forwarded-Proto: https\r\n")
	} else {
		bw.WriteString("\r\nX-Forwarded-Proto: http\r\n")
	}
	if req.upgrade != "" {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(req.upgrade)
		bw.WriteString("\r\n")
	}
	switch {
	case req.length > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(req.length, 10))
		bw.WriteString("\r\n")
	case req.length < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case req.method == http.MethodPost || req.method == http.MethodPut || req.method == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
	if req.length != 0 {
		if err := copyRequestBody(bw, req.body, req.length); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return &writeError{err}
	}
	return nil
}

// copyRequestBody sends the client's body: length bytes, or chunked when
// the length is unknown (-1).
func copyRequestBody(bw *bufio.Writer, body io.Reader, length int64) error {
	src := clientBody{body}
	if length > 0 {
		n, err := io.CopyN(bw, src, length)
		var berr *bodyError
		switch {
		case errors.As(err, &berr):
			return berr
		case n < length && (err == nil || err == io.EOF):
			return &bodyError{io.ErrUnexpectedEOF}
		case err != nil:
			return &writeError{err}
		}
		return nil
	}
	buf := buffers.Get()
	defer buffers.Put(buf)
	cw := httputil.NewChunkedWriter(bw)
	if _, err := io.CopyBuffer(cw, src, buf); err != nil {
		var berr *bodyError
		if errors.As(err, &berr) {
			return berr
		}
		return &writeError{err}
	}
	if err := cw.Close(); err != nil {
		return &writeError{err}
	}
	bw.WriteString("\r\n")
	return nil
}

// clientBody marks failures to read the client's body as the client's.
type clientBody struct{ r io.Reader }

func (b clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &bodyError{err}
	}
	return n, err
}

// writeError is a failure to send the request to the app.
type writeError struct{ err error }

func (e *writeError) Error() string { return "writing the request to the app: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// bodyError is a failure to read the client's request body (including the
// body limit); it is the client's fault, not the app's.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// errSwitched is an app switching protocols that was not asked to.
var errSwitched = errors.New("the app switched protocols without being asked")

// readResponse reads the app's response head on uc, within timeout of
// when req was sent (tried: when this try began, for a request without a
// body): by the fast parser when it is simple, by net/http's otherwise.
// Interim responses are skipped, except 101 for an upgrade.
func readResponse(uc *upConn, req *request, timeout time.Duration, tried time.Time) (*response, error) {
	if timeout > 0 {
		sent := tried
		if req.length != 0 {
			sent = time.Now() // a body may have taken long to send
		}
		uc.readBy(sent.Add(timeout), timeout/64)
	}
	r := &uc.resp
	r.raw, r.stream = nil, false
	if req.method != http.MethodHead && req.upgrade == "" {
		ok, err := parseResponse(uc.br, r)
		if err != nil {
			return nil, err
		}
		if ok {
			if int64(uc.br.Buffered()) < r.length {
				// The body's reads are not the head's: no deadline for
				// them. (One in the buffer whole, the common case,
				// leaves it for the next request to move or keep.)
				uc.readBy(time.Time{}, 0)
			}
			r.lr = io.LimitedReader{R: uc.br, N: r.length}
			r.body, r.noBody = &r.lr, false
			return r, nil
		}
	}
	defer uc.readBy(time.Time{}, 0)
	uc.req.Method = req.method
	for {
		resp, err := http.ReadResponse(uc.br, &uc.req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols && req.upgrade == "" {
			return nil, errSwitched
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // the app's business with this proxy: Expect was answered already
		}
		status := resp.Status
		if i := strings.IndexByte(status, ' '); i < 0 {
			status = strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
		}
		r.status, r.statusLine = resp.StatusCode, append(r.statusLine[:0], status...)
		r.fields = appendFields(r.fields[:0], resp.Header, responseDrop)
		r.length, r.close, r.body, r.raw = resp.ContentLength, resp.Close, resp.Body, resp
		r.noBody = req.method == http.MethodHead || resp.StatusCode < 200 || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
		r.stream = !r.noBody && (r.length < 0 || isEventStream(resp.Header.Get("Content-Type")))
		return r, nil
	}
}

// parseResponse reads a response head from br's buffer when it is simple
// enough for the fast path (HTTP/1.1, a final status with a body, one
// Content-Length, no Transfer-Encoding, no event stream) and consumes it.
// Otherwise it consumes nothing and returns false.
func parseResponse(br *bufio.Reader, r *response) (bool, error) {
	b, err := peekHeadBytes(br)
	if b == nil || err != nil || !bytes.HasSuffix(b, []byte("\r\n\r\n")) {
		return false, err
	}
	line, rest, _ := bytes.Cut(b, []byte("\r\n"))
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') || !plainText(line) {
		return false, nil
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified {
		return false, nil
	}
	r.status, r.statusLine, r.fields, r.length, r.close = code, append(r.statusLine[:0], line[9:]...), r.fields[:0], -1, false
	var buf [64]byte
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
		switch lower := lowerASCII(&buf, name); string(lower) {
		case "transfer-encoding":
			return false, nil
		case "content-length":
			n, err := strconv.ParseUint(string(value), 10, 62)
			if err != nil || r.length >= 0 {
				return false, nil
			}
			r.length = int64(n)
			continue
		case "content-type":
			if isEventStream(string(value)) {
				return false, nil
			}
		case "connection":
			closeConn, others := connectionOptions(value)
			if len(others) > 0 {
				return false, nil // it names other hop-by-hop fields: net/http sorts that out
			}
			r.close = r.close || closeConn
			continue
		default:
			if responseDrop.lower[string(lower)] {
				continue
			}
		}
		r.fields = append(r.fields, line...)
		r.fields = append(r.fields, "\r\n"...)
	}
	if r.length < 0 {
		return false, nil
	}
	br.Discard(len(b))
	return true, nil
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
		if n := headEnd(b); n >= 0 {
			return b[:n], nil
		}
		if len(b) >= maxHead {
			return nil, nil
		}
		want = len(b) + 1
	}
}

// headEnd returns the length of the head at the start of b, through the
// empty line that ends it, or -1 when b holds no whole head yet. Lines may
// end in a bare LF, which RFC 9112 (2.2) lets a recipient accept: such a
// head is found, so that nobody waits for a CRLF that never comes, and
// left to the parsers, which take only CRLF heads.
func headEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
}

// maxTries bounds the targets one request is sent to: the first, and at
// most two others when it could not be sent (see unsent).
const maxTries = 3

// send sends req to p's target and reads the response head. While a try
// left req unsent, it goes on to another target (unsent says when): it
// never repeats what may have reached an app. A target that refused the
// connection is ejected (Service.refused). send returns the target of the
// last try, which still counts req as in flight; the others are released.
func (s *Service) send(req *request, p picked) (picked, *upConn, *response, error) {
	var tried [maxTries]*Target
	fresh := false
	for try := 0; ; try++ {
		tried[try] = p.t
		uc, resp, reused, err := p.t.exchange(req, s.opts.UpstreamTimeout, fresh)
		_, dialErr := err.(*dialError)
		switch {
		case dialErr:
			s.refused(p, err)
		case err == nil || !reused:
			s.reached(p) // it accepted a connection
		}
		if err == nil || try+1 == maxTries || !unsent(err, req, reused) {
			return p, uc, resp, err
		}
		next := s.pickAnother(tried[:try+1], p.version)
		switch {
		case next.t != nil:
			p.t.releaseStream(false)
			p, fresh = next, false
		case !dialErr:
			// Only a pooled connection was stale, and no other target
			// takes requests: a new connection to this one.
			fresh = true
		default:
			return p, nil, nil, err
		}
	}
}

// unsent is the retry rule: whether a failed try left nothing of req at
// the app, so that it may be sent again. That is so when the connection
// could not be made, and when a reused keep-alive connection turned out
// closed and req has no body (the app closed it while idle: nothing was
// read of the request, and the client's body was not consumed). Anything
// else may have reached the app, and is not sent again.
func unsent(err error, req *request, reused bool) bool {
	_, dialErr := err.(*dialError)
	return dialErr || reused && req.length == 0 && isClosedConnErr(err)
}

// dialError is a failure to connect to a target: nothing was sent.
// exchange returns it as it is, never wrapped.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connecting to the app: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// exchange sends req to t and reads the response head: on an idle pooled
// connection when there is one (and fresh is not set), else on a new one.
// reused says which.
func (t *Target) exchange(req *request, timeout time.Duration, fresh bool) (uc *upConn, resp *response, reused bool, err error) {
	// One clock reading per try: a pick may have waited for a first
	// version, and a try before this one for a dial.
	now := time.Now()
	if !fresh {
		uc = t.pool.get(now)
	}
	reused = uc != nil
	if uc == nil {
		if uc, err = t.dialConn(); err != nil {
			return nil, nil, false, &dialError{err}
		}
	}
	err = writeRequest(uc.bw, req)
	if err == nil {
		resp, err = readResponse(uc, req, timeout, now)
	}
	if err != nil {
		uc.close()
		return nil, nil, reused, err
	}
	return uc, resp, reused, nil
}

// copyBody copies a response body to the client: re-chunked when chunk
// is set, flushed after every read when flush is not nil (streams).
func copyBody(dst io.Writer, src io.Reader, chunk bool, flush func() error) (int64, error) {
	if !chunk && flush == nil {
		return io.Copy(dst, src)
	}
	buf := buffers.Get()
	defer buffers.Put(buf)
	bw, _ := dst.(*bufio.Writer)
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			total += int64(n)
			if chunk {
				bw.WriteString(strconv.FormatInt(int64(n), 16))
				bw.WriteString("\r\n")
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return total, err
			}
			if chunk {
				bw.WriteString("\r\n")
			}
			if flush != nil {
				if err := flush(); err != nil {
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
	if chunk {
		bw.WriteString("0\r\n\r\n")
	}
	return total, nil
}

// serve forwards one request and answers the client through c: the one
// forwarding path. It returns whether the client's connection may carry
// another request.
func (s *Service) serve(ctx context.Context, req *request, c client) (keep bool) {
	req.start = time.Now()
	status, written := 0, int64(0)
	var p picked
	var end time.Time
	defer func() {
		if end.IsZero() {
			end = time.Now()
		}
		took := end.Sub(req.start)
		if p.t != nil {
			s.obs.Done(p.version, req.method, status, took, written)
		}
		if s.opts.AccessLog {
			target := ""
			if p.t != nil {
				target = p.t.addr
			}
			s.logRequest(req, status, written, target, end)
		}
	}()
	if s.opts.MaxBodyBytes > 0 && req.length > s.opts.MaxBodyBytes {
		status = http.StatusRequestEntityTooLarge
		c.reply(status, "", errorBody(s.app, status, "request body too large"))
		return false
	}
	p = s.pick(ctx)
	if p.t == nil {
		// No version serves yet (a first deploy), or none any more: the
		// app never saw this request, so it counts apart from its own.
		s.obs.UpstreamError("", "no_target")
		status = http.StatusServiceUnavailable
		c.reply(status, "", errorBody(s.app, status, "no version of this app is serving yet"))
		return req.length == 0
	}
	s.obs.Start()
	stream := false
	p, uc, resp, err := s.send(req, p)
	defer func() { p.t.releaseStream(stream) }()
	if err != nil {
		var msg string
		status, msg = classify(p.t, err)
		if status == StatusClientClosedRequest {
			return false
		}
		s.upstreamError(p.version, status, err)
		c.reply(status, "", errorBody(s.app, status, msg))
		return req.length == 0 && status != http.StatusRequestEntityTooLarge
	}
	if resp.stream || resp.status == http.StatusSwitchingProtocols {
		stream = true
		p.t.streams.Add(1)
	}
	status = resp.status
	if req.hsts != "" && !hasField(resp.fields, "strict-transport-security") {
		resp.fields = append(resp.fields, "Strict-Transport-Security: "...)
		resp.fields = append(resp.fields, req.hsts...)
		resp.fields = append(resp.fields, "\r\n"...)
	}
	written, err = c.respond(req, resp, uc)
	if err == nil && resp.raw == nil && !resp.noBody && resp.length >= 0 && written < resp.length {
		// The app's connection ended inside the body it announced (it
		// crashed): io.Copy takes that end for the body's. The client
		// has an answer cut short; its connection must end now, not wait
		// for the rest until the idle timeout.
		err = fmt.Errorf("the app's response ended after %d of %d bytes: %w", written, resp.length, io.ErrUnexpectedEOF)
	}
	if resp.raw != nil {
		resp.raw.Body.Close()
	}
	if resp.status == http.StatusSwitchingProtocols {
		uc.close()
		return false
	}
	end = time.Now()
	p.t.releaseConn(uc, err == nil && !resp.close, end)
	return err == nil
}

// StatusClientClosedRequest is logged when the client went away before the
// response was written (nginx's 499).
const StatusClientClosedRequest = 499

// classify is the one place that turns an upstream failure into a status
// and a message for the client.
func classify(t *Target, err error) (int, string) {
	var tooBig *http.MaxBytesError
	var netErr net.Error
	var clientErr *bodyError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, "request body too large"
	case t != nil && t.cut.Load():
		return http.StatusServiceUnavailable, "the version serving this request was retired"
	case errors.Is(err, context.Canceled), errors.As(err, &clientErr):
		return StatusClientClosedRequest, ""
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return http.StatusGatewayTimeout, "the app took too long to answer"
	}
	return http.StatusBadGateway, "the app could not be reached"
}

// upstreamError logs and counts a request the app could not answer.
func (s *Service) upstreamError(version string, status int, err error) {
	kind := "unreachable"
	switch status {
	case http.StatusGatewayTimeout:
		kind = "timeout"
	case http.StatusServiceUnavailable:
		kind = "retired"
	case http.StatusRequestEntityTooLarge:
		return // the client's fault, not the app's
	}
	s.obs.UpstreamError(version, kind)
	s.log.LogAttrs(context.Background(), slog.LevelWarn, "upstream error", slog.Int("status", status), slog.String("version", version), slog.String("error", err.Error()))
}

// errorBody is the text of the proxy's own replies; app is "" for a
// request no app took.
func errorBody(app string, status int, msg string) string {
	if app == "" {
		return fmt.Sprintf("%d %s: %s (sprout)\n", status, http.StatusText(status), msg)
	}
	return fmt.Sprintf("%d %s: %s (sprout, app %s)\n", status, http.StatusText(status), msg, app)
}

// hasField tells whether header lines ("Name: value\r\n") have a field
// named name (in lower case).
func hasField(lines []byte, name string) bool {
	for len(lines) > 0 {
		line, rest, _ := bytes.Cut(lines, []byte("\r\n"))
		lines = rest
		if n, _, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(bytes.TrimSpace(n), []byte(name)) {
			return true
		}
	}
	return false
}

// replyFields are the header lines of the proxy's own replies, besides
// their length.
func replyFields(status int) string {
	if status == http.StatusServiceUnavailable {
		return "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nRetry-After: 1\r\n"
	}
	return "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
}

// logRequest writes one access-log line.
func (s *Service) logRequest(req *request, status int, bytes int64, target string, end time.Time) {
	accessLog(s.opts.AccessLogOutput, s.log, s.app, req, status, bytes, target, end)
}

// accessLog writes one access-log line for a request that ended at end:
// built by hand and written to out in one call when that is set (the
// agent's JSON log), through log at Info otherwise (its text format). A
// request never served (req.start unset) took 0.
func accessLog(out io.Writer, log *slog.Logger, app string, req *request, status int, bytes int64, target string, end time.Time) {
	var took time.Duration
	if !req.start.IsZero() {
		took = end.Sub(req.start)
	}
	path := req.uri
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i] // queries may carry secrets and unbounded values
	}
	if out != nil {
		l := accessLine{app: app, method: req.method, path: path, host: req.host, remote: req.remote, upstream: target, status: status, bytes: bytes, took: took}
		bp := linePool.Get().(*[]byte)
		*bp = l.appendTo((*bp)[:0], end)
		out.Write(*bp)
		if cap(*bp) <= 4<<10 {
			linePool.Put(bp)
		}
		return
	}
	log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("method", req.method),
		slog.String("path", path),
		slog.String("host", req.host),
		slog.Int("status", status),
		slog.Int64("bytes", bytes),
		slog.Float64("duration_ms", float64(took.Microseconds())/1000),
		slog.String("remote", req.remote),
		slog.String("upstream", target),
	)
}

func isEventStream(ct string) bool {
	return len(ct) >= 17 && ct[:17] == "text/event-stream"
}

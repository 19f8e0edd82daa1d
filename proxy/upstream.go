package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The proxy's fast path. http.Transport hands every request to two
// goroutines per connection (a writer and a reader) and back over channels;
// for a proxy on loopback that handoff costs more than the forwarding
// itself. Here the goroutine serving the client writes the request to a
// pooled upstream connection and reads the response from it, with
// net/http's own parsers (http.ReadResponse) for correctness. Upgrades
// (websockets) still go through httputil.ReverseProxy.

// upConn is one keep-alive connection to a target.
type upConn struct {
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
}

// maxIdlePerTarget bounds the idle connections kept to one target.
const maxIdlePerTarget = 512

// idleTimeout is how long an idle upstream connection may be reused.
const idleTimeout = 60 * time.Second

// freshFor is how long after its last response a connection is reused
// without checking that the app kept it open.
const freshFor = 5 * time.Millisecond

type upPool struct {
	mu   sync.Mutex
	idle []*upConn
}

func (p *upPool) get() *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		uc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		idle := time.Since(uc.idleAt)
		// Under load a connection comes back within a few milliseconds,
		// too soon for any keep-alive timeout: skip the peek's syscall.
		if idle < freshFor || idle < idleTimeout && alive(uc) {
			return uc
		}
		uc.conn.Close()
	}
	return nil
}

func (p *upPool) put(uc *upConn) {
	uc.idleAt = time.Now()
	p.mu.Lock()
	if len(p.idle) < maxIdlePerTarget {
		p.idle = append(p.idle, uc)
		uc = nil
	}
	p.mu.Unlock()
	if uc != nil {
		uc.conn.Close()
	}
}

// alive tells whether an idle connection is still open: the app may have
// closed it (keep-alive timeouts), and a request written to it would fail.
// It peeks without blocking: EOF means closed, no data means open.
func alive(uc *upConn) bool {
	if uc.br.Buffered() > 0 {
		return false // an idle connection has nothing to say
	}
	tc, ok := uc.conn.(*trackedConn)
	if !ok {
		return true
	}
	sc, ok := tc.Conn.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	var b [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		open = n < 0 && (rerr == unix.EAGAIN || rerr == unix.EWOULDBLOCK)
		return true
	})
	return err == nil && open
}

var bufioReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
var bufioWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}

func (t *Target) dialConn() (*upConn, error) {
	c, err := t.conns.DialContext(context.Background(), "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	br := bufioReaders.Get().(*bufio.Reader)
	br.Reset(c)
	bw := bufioWriters.Get().(*bufio.Writer)
	bw.Reset(c)
	return &upConn{conn: c, br: br, bw: bw}, nil
}

func (uc *upConn) close() {
	uc.conn.Close()
	uc.br.Reset(nil)
	bufioReaders.Put(uc.br)
	uc.bw.Reset(nil)
	bufioWriters.Put(uc.bw)
}

// hopHeaders are meaningful for one connection only and are not forwarded
// (RFC 9110, 7.6.1), besides the X-Forwarded ones the proxy sets itself and
// Expect, which the server side already answered.
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

var skipRequestHeaders = map[string]bool{
	"X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true, "Expect": true, "Host": true,
}

// isUpgrade tells whether a request asks to switch protocols.
func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && headerHasToken(r.Header["Connection"], "upgrade")
}

func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

// contentLength is skipped by writeFields where the proxy writes the
// length itself.
var contentLength = map[string]bool{"Content-Length": true}

// writeFields writes h's fields, leaving out hop-by-hop ones (those of
// hopHeaders and those h's Connection header names) and skip's.
func writeFields(bw *bufio.Writer, h http.Header, skip map[string]bool) {
	hop := connectionTokens(h)
	for k, vs := range h {
		if hopHeaders[k] || hop[k] || skip[k] {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

// releaseConn returns an upstream connection to the target's pool when it
// can carry another request, and closes it otherwise.
func (t *Target) releaseConn(uc *upConn, reuse bool) {
	if reuse {
		t.pool.put(uc)
	} else {
		uc.close()
	}
}

// connectionTokens lists the headers a Connection header marks as
// hop-by-hop.
func connectionTokens(h http.Header) map[string]bool {
	vs := h["Connection"]
	if len(vs) == 0 {
		return nil
	}
	out := map[string]bool{}
	for _, v := range vs {
		for _, part := range strings.Split(v, ",") {
			if p := strings.TrimSpace(part); p != "" {
				out[textproto.CanonicalMIMEHeaderKey(p)] = true
			}
		}
	}
	return out
}

// roundTrip forwards r to t and copies the response to w. An error before
// anything was written to w is for the caller to turn into a status.
func (t *Target) roundTrip(w *requestState, r *http.Request, timeout time.Duration) error {
	bodyless := r.ContentLength == 0
	for attempt := 0; ; attempt++ {
		var uc *upConn
		if attempt == 0 {
			uc = t.pool.get()
		}
		reused := uc != nil
		if uc == nil {
			var err error
			if uc, err = t.dialConn(); err != nil {
				return err
			}
		}
		resp, err := t.send(uc, r, timeout)
		if err != nil {
			uc.close()
			// A reused connection the app closed under us: if it said
			// nothing and the request had no body, nothing was processed,
			// so a fresh connection may be tried once.
			var werr *writeError
			if reused && attempt == 0 && (bodyless || errors.As(err, &werr)) && isClosedConnErr(err) {
				continue
			}
			return err
		}
		t.respond(w, r, uc, resp)
		return nil
	}
}

type writeError struct{ err error }

func (e *writeError) Error() string { return "writing the request to the app: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

func isClosedConnErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// send writes the request and reads the response head.
func (t *Target) send(uc *upConn, r *http.Request, timeout time.Duration) (*http.Response, error) {
	bw := uc.bw
	uri := r.RequestURI
	if uri == "" || uri[0] != '/' {
		uri = r.URL.RequestURI()
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	writeFields(bw, r.Header, skipRequestHeaders)
	clientIP, _, err := net.SplitHostPort(r.RemoteAddr)
	if err == nil {
		bw.WriteString("X-Forwarded-For: ")
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			bw.WriteString(strings.Join(prior, ", "))
			bw.WriteString(", ")
		}
		bw.WriteString(clientIP)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-Host: ")
	bw.WriteString(r.Host)
	if r.TLS != nil {
		bw.WriteString("\r\nX-Forwarded-Proto: https\r\n")
	} else {
		bw.WriteString("\r\nX-Forwarded-Proto: http\r\n")
	}
	chunked := false
	switch {
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(r.ContentLength, 10))
		bw.WriteString("\r\n\r\n")
	case r.ContentLength < 0:
		chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	case r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n\r\n")
	default:
		bw.WriteString("\r\n")
	}
	if r.ContentLength != 0 {
		if err := copyRequestBody(bw, r.Body, chunked); err != nil {
			return nil, err
		}
	}
	if err := bw.Flush(); err != nil {
		return nil, &writeError{err}
	}
	if timeout > 0 {
		uc.conn.SetReadDeadline(time.Now().Add(timeout))
	}
	for {
		resp, err := http.ReadResponse(uc.br, r)
		if err != nil {
			return nil, err
		}
		// Interim responses other than 101 are the app's business with
		// this proxy (Expect was already answered): skip them.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		if timeout > 0 {
			uc.conn.SetReadDeadline(time.Time{})
		}
		return resp, nil
	}
}

// bodyError is a failure to read the client's request body (including the
// body limit); it is the client's fault, not the app's.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

func copyRequestBody(bw *bufio.Writer, body io.Reader, chunked bool) error {
	buf := buffers.Get()
	defer buffers.Put(buf)
	var dst io.Writer = bw
	var cw io.WriteCloser
	if chunked {
		cw = httputil.NewChunkedWriter(bw)
		dst = cw
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return &writeError{err}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return &bodyError{rerr}
		}
	}
	if cw != nil {
		if err := cw.Close(); err != nil {
			return &writeError{err}
		}
		bw.WriteString("\r\n")
	}
	return nil
}

// respond copies the response to the client and returns the connection to
// the pool when the response was read to its end. When the copy breaks
// (the app died mid-body, or the client left) it aborts the client's
// connection, so that a cut response never looks complete.
func (t *Target) respond(w *requestState, r *http.Request, uc *upConn, resp *http.Response) {
	h := w.Header()
	hop := connectionTokens(resp.Header)
	for k, vs := range resp.Header {
		if hopHeaders[k] || hop[k] {
			continue
		}
		h[k] = vs
	}
	streaming := resp.ContentLength < 0 || isEventStream(resp.Header.Get("Content-Type"))
	if resp.ContentLength >= 0 && r.Method != http.MethodHead && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	w.WriteHeader(resp.StatusCode)
	err := copyResponseBody(w, resp.Body, streaming)
	resp.Body.Close()
	t.releaseConn(uc, err == nil && !resp.Close)
	if err != nil {
		panic(http.ErrAbortHandler)
	}
}

func copyResponseBody(w *requestState, body io.Reader, streaming bool) error {
	buf := buffers.Get()
	defer buffers.Put(buf)
	var flush func() error
	if streaming {
		flush = http.NewResponseController(w.ResponseWriter).Flush
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if flush != nil {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

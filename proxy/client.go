package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// The net/http client side: requests the fast path hands over (HTTP/1.0,
// chunked or Expect uploads, upgrades, odd or oversized heads) are read by
// Go's HTTP server and forwarded by the same Service.serve.

// serveHTTP turns a request net/http read into the proxy's and hands it
// to dispatch, which answers through w; bodies are capped at maxBody
// bytes (0 for no cap).
func serveHTTP(w http.ResponseWriter, r *http.Request, maxBody int64, dispatch func(context.Context, *request, client) bool) {
	if maxBody > 0 && r.ContentLength <= maxBody {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	}
	req := &request{method: r.Method, uri: r.RequestURI, host: r.Host, remote: r.RemoteAddr, https: r.TLS != nil, length: r.ContentLength, body: r.Body}
	if r.TLS != nil {
		req.sni = r.TLS.ServerName
	}
	if req.uri == "" || req.uri[0] != '/' {
		req.uri = r.URL.RequestURI()
	}
	req.fields = appendFields(nil, r.Header, requestDrop)
	if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
		req.xff = []byte(strings.Join(prior, ", "))
	}
	req.clientIP, _, _ = net.SplitHostPort(r.RemoteAddr)
	if isUpgrade(r) {
		req.upgrade = r.Header.Get("Upgrade")
	}
	if len(r.TransferEncoding) > 0 {
		// A request with both Transfer-Encoding and Content-Length is how
		// request smuggling starts: RFC 9112 (6.1) lets a server refuse
		// it or process it as chunked, and either way it MUST close the
		// connection after responding. It is processed as chunked and
		// the connection closed, since only that covers every case:
		// every chunked request comes here (the fast path takes none),
		// and net/http has dropped Content-Length before this handler
		// sees the request, so a 400 could not tell such a request from
		// a plain chunked upload. Closing after every chunked request
		// costs an upload, which is rare and long, one new connection.
		w.Header().Set("Connection", "close")
	}
	c := &httpClient{w: w}
	dispatch(r.Context(), req, c)
	if c.cut {
		// A response cut mid-body must not look complete to the client.
		panic(http.ErrAbortHandler)
	}
}

// isUpgrade tells whether a request asks to switch protocols.
func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && connectionTokens(r.Header["Connection"])["Upgrade"]
}

// httpClient writes answers through net/http's ResponseWriter.
type httpClient struct {
	w   http.ResponseWriter
	cut bool
}

func (c *httpClient) reply(status int, fields, body string) {
	h := c.w.Header()
	setFields(h, replyFields(status))
	setFields(h, fields)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	c.w.WriteHeader(status)
	io.WriteString(c.w, body)
}

func (c *httpClient) respond(req *request, resp *response, uc *upConn) (int64, error) {
	if resp.status == http.StatusSwitchingProtocols {
		return c.switchProtocols(resp, uc)
	}
	h := c.w.Header()
	setFields(h, string(resp.fields))
	if resp.length >= 0 && resp.status != http.StatusNoContent && resp.status != http.StatusNotModified {
		h["Content-Length"] = []string{strconv.FormatInt(resp.length, 10)}
	}
	c.w.WriteHeader(resp.status)
	if resp.noBody {
		return 0, nil
	}
	var flush func() error
	if resp.stream {
		flush = http.NewResponseController(c.w).Flush
	}
	n, err := copyBody(c.w, resp.body, false, flush)
	c.cut = err != nil
	return n, err
}

// switchProtocols takes over the client's connection after the app agreed
// to an upgrade (websockets) and copies bytes both ways until either side
// closes. A drain that runs out of time closes the app's side, which ends
// both.
func (c *httpClient) switchProtocols(resp *response, uc *upConn) (int64, error) {
	conn, brw, err := http.NewResponseController(c.w).Hijack()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	head := append([]byte("HTTP/1.1 "), resp.statusLine...)
	head = append(head, "\r\nConnection: Upgrade\r\nUpgrade: "...)
	head = append(head, resp.raw.Header.Get("Upgrade")...)
	head = append(head, "\r\n"...)
	head = append(head, resp.fields...)
	head = append(head, "\r\n"...)
	if _, err := conn.Write(head); err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// What the client sent after its head, then the rest.
		io.Copy(uc.conn, io.MultiReader(bufferedOf(brw.Reader), conn))
		if tc, ok := uc.conn.(*trackedConn); ok {
			if cw, ok := tc.Conn.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}
	})
	n, err := io.Copy(conn, uc.br)
	conn.Close()
	uc.conn.Close()
	wg.Wait()
	return n, err
}

// bufferedOf returns the bytes br holds, without reading more.
func bufferedOf(br *bufio.Reader) io.Reader {
	b, _ := br.Peek(br.Buffered())
	return bytes.NewReader(b)
}

// setFields adds header lines ("Name: value\r\n") to h.
func setFields(h http.Header, lines string) {
	for len(lines) > 0 {
		line, rest, _ := strings.Cut(lines, "\r\n")
		lines = rest
		if name, value, ok := strings.Cut(line, ":"); ok {
			h.Add(name, strings.TrimLeft(value, " \t"))
		}
	}
}

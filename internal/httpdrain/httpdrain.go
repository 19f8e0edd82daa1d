// Package httpdrain stops a net/http server without failing a request
// that reached it. net/http's Shutdown (and SetKeepAlivesEnabled(false))
// closes idle keep-alive connections at once, racing with the request a
// client may be sending on one, and closes without an answer a
// connection whose first request it reads after the shutdown began (one
// accepted a moment before): a client that does not retry sees these
// requests fail. Drain instead stops accepting, answers each request
// that still comes on an open connection with "Connection: close", and
// closes only connections that stay idle for a while.
package httpdrain

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Server is an http.Server that Drain stops. Serve it with Server.Serve,
// never stop it with Shutdown.
type Server struct {
	*http.Server

	conns sync.Map // net.Conn → *connState

	// closing makes each request answered with "Connection: close".
	closing atomic.Bool

	mu       sync.Mutex
	lns      []net.Listener
	serving  sync.WaitGroup
	draining bool
}

// connState is a connection's last state and since when.
type connState struct {
	state atomic.Int32 // an http.ConnState
	since atomic.Int64 // Unix nanoseconds
}

// New returns srv ready to be drained; it wraps srv.Handler and takes
// over srv.ConnState, calling the one srv had after its own.
func New(srv *http.Server) *Server {
	s := &Server{Server: srv}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.closing.Load() {
			// net/http closes the connection after this answer.
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew, http.StateActive, http.StateIdle:
			v, _ := s.conns.LoadOrStore(c, &connState{})
			cs := v.(*connState)
			cs.state.Store(int32(st))
			cs.since.Store(time.Now().UnixNano())
		default: // closed or hijacked: no longer the server's
			s.conns.Delete(c)
		}
		if prev != nil {
			prev(c, st)
		}
	}
	return s
}

// Serve serves ln until Drain or Close; it returns http.ErrServerClosed
// then.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	err := s.Server.Serve(ln)
	if errors.Is(err, net.ErrClosed) {
		return http.ErrServerClosed
	}
	return err
}

// CloseConnections makes every request from now on answered with
// "Connection: close", as Drain does first; the server still accepts.
func (s *Server) CloseConnections() { s.closing.Store(true) }

// Drain stops accepting and lets every connection finish: requests in
// flight are answered, and each one that still comes on an open
// connection, or first on one accepted a moment ago, is answered with
// "Connection: close". A connection that has sent nothing for idleAfter is
// closed. When ctx ends, what is left is closed. Drain returns when no
// connection is left.
func (s *Server) Drain(ctx context.Context, idleAfter time.Duration) {
	s.CloseConnections()
	s.mu.Lock()
	s.draining = true
	lns := s.lns
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	// Once Serve returned, every connection it accepted is known.
	s.serving.Wait()
	idleFor := func(v any, now time.Time) time.Duration {
		cs := v.(*connState)
		if http.ConnState(cs.state.Load()) == http.StateActive {
			return 0
		}
		return now.Sub(time.Unix(0, cs.since.Load()))
	}
	if WaitIdle(ctx, &s.conns, idleAfter, idleFor) != nil {
		s.Server.Close()
	}
}

// WaitIdle waits until conns (net.Conn → state) is empty, closing every
// connection that idleFor says has been idle for idleAfter and that has no
// unread bytes. It returns ctx's error when ctx ends first, leaving the
// rest to the caller. The drain of an HTTP server and of the proxy's fast
// path share it.
func WaitIdle(ctx context.Context, conns *sync.Map, idleAfter time.Duration, idleFor func(state any, now time.Time) time.Duration) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		open := 0
		now := time.Now()
		conns.Range(func(k, v any) bool {
			open++
			if c := k.(net.Conn); idleFor(v, now) >= idleAfter && !Unread(c) {
				c.Close()
			}
			return true
		})
		if open == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Unread tells whether the client sent bytes that the server has not read
// yet: a connection that looks idle, but only because the goroutine
// serving it has not run since its request came, must not be closed.
func Unread(c net.Conn) bool {
	// A TLS connection, or one a fast path handed over, wraps the socket.
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n > 0
}

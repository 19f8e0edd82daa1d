package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Connections to the apps. http.Transport hands every request to two
// goroutines per connection (a writer and a reader) and back over channels;
// for a proxy on loopback that handoff costs more than the forwarding
// itself. Here the goroutine serving the client writes the request to a
// pooled upstream connection and reads the response from it (forward.go).

// upConn is one keep-alive connection to a target.
type upConn struct {
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
	// deadline is the read deadline set on conn, zero for none.
	deadline time.Time
	resp     response     // the response being read, reused
	req      http.Request // for http.ReadResponse, reused
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

// readBy moves uc's read deadline (moveDeadline).
func (uc *upConn) readBy(t time.Time, slack time.Duration) {
	moveDeadline(uc.conn, &uc.deadline, t, slack)
}

// get takes an idle connection that is still open, if there is one; now
// is about the current time.
func (p *upPool) get(now time.Time) *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		uc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		idle := now.Sub(uc.idleAt)
		// Under load a connection comes back within a few milliseconds,
		// too soon for any keep-alive timeout: skip the peek's syscall.
		if idle < freshFor || idle < idleTimeout && alive(uc) {
			return uc
		}
		uc.close()
	}
	return nil
}

// put keeps uc, idle since now.
func (p *upPool) put(uc *upConn, now time.Time) {
	uc.idleAt = now
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
	// The last response's head deadline may still be set (and past): the
	// peek below would fail on it.
	uc.readBy(time.Time{}, 0)
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

// releaseConn returns an upstream connection to the target's pool when it
// can carry another request, and closes it otherwise.
func (t *Target) releaseConn(uc *upConn, reuse bool, now time.Time) {
	if reuse {
		t.pool.put(uc, now)
	} else {
		uc.close()
	}
}

// isClosedConnErr tells whether err means the app's end of the connection
// was closed.
func isClosedConnErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// closeIdle closes the pool's idle connections.
func (p *upPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		uc.close()
	}
}

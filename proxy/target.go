package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one container the proxy forwards to. It counts its in-flight
// requests so that it can be drained before the container stops, and
// tracks its upstream connections so that a drain that runs out of time
// can cut what is left.
type Target struct {
	addr  string
	conns connTracker
	pool  upPool

	inflight atomic.Int64
	// streams counts in-flight requests that became websockets or event
	// streams: they never end by themselves, so a drain cuts them sooner.
	streams  atomic.Int64
	draining atomic.Bool
	// cut is set when a drain ran out of time and closed the connections.
	cut atomic.Bool

	// unhealthy is set by the agent's active health checks (SetHealthy).
	unhealthy atomic.Bool
	// ejectedUntil is zero while t is in the rotation. After t refused a
	// connection it is the time (monoNow) of its next trial; backoff is
	// the wait before that trial.
	ejectedUntil atomic.Int64
	backoff      atomic.Int64
}

// Passive ejection's back-off: a target that refused a connection is tried
// again after firstBackoff, then after twice as long after each failed
// trial, up to maxBackoff.
const (
	firstBackoff = time.Second
	maxBackoff   = 30 * time.Second
)

// monoStart makes monoNow monotonic: a wall-clock jump moves no back-off.
var monoStart = time.Now()

func monoNow() int64 { return int64(time.Since(monoStart)) }

// bufferPool shares copy buffers between all targets.
type bufferPool struct{ sync.Pool }

func (p *bufferPool) Get() []byte  { return *(p.Pool.Get().(*[]byte)) }
func (p *bufferPool) Put(b []byte) { p.Pool.Put(&b) }

var buffers = &bufferPool{sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

func newTarget(addr string) *Target {
	t := &Target{addr: addr}
	t.conns.dialer = net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return t
}

// acquire counts a request against t unless t is draining.
func (t *Target) acquire() bool {
	t.inflight.Add(1)
	if t.draining.Load() {
		t.inflight.Add(-1)
		return false
	}
	return true
}

// takes tells whether t may take a new request: it is healthy and in the
// rotation, or it was ejected, its back-off has passed, and this request
// wins its one trial (half-open). Whoever wins the trial moves the next
// one a back-off later, so that the others wait for its outcome.
func (t *Target) takes() (ok, trial bool) {
	if t.unhealthy.Load() {
		return false, false
	}
	until := t.ejectedUntil.Load()
	if until == 0 {
		return true, false
	}
	now := monoNow()
	if now < until || !t.ejectedUntil.CompareAndSwap(until, now+t.backoff.Load()) {
		return false, false
	}
	return true, true
}

// inRotation tells whether t takes requests without a trial.
func (t *Target) inRotation() bool {
	return !t.unhealthy.Load() && t.ejectedUntil.Load() == 0
}

// eject takes t out of the rotation after it refused a connection, and
// tells whether that was a transition: a target already ejected whose
// trial failed waits twice as long (up to maxBackoff) for the next one;
// other requests failing at the same time change nothing.
func (t *Target) eject(trial bool) (ejected bool, backoff time.Duration) {
	if trial {
		b := min(2*time.Duration(t.backoff.Load()), maxBackoff)
		t.backoff.Store(int64(b))
		t.ejectedUntil.Store(monoNow() + int64(b))
		return false, b
	}
	if t.ejectedUntil.Load() != 0 {
		return false, 0
	}
	t.backoff.Store(int64(firstBackoff))
	return t.ejectedUntil.CompareAndSwap(0, monoNow()+int64(firstBackoff)), firstBackoff
}

// reached records that t accepted a connection, and tells whether that
// returned it to the rotation.
func (t *Target) reached() bool {
	until := t.ejectedUntil.Load()
	return until != 0 && t.ejectedUntil.CompareAndSwap(until, 0)
}

// setHealthy records what an active health check found, and tells whether
// that changed t's state. A passing check also ends a passive ejection:
// the target accepts connections again.
func (t *Target) setHealthy(ok bool) (changed bool) {
	if ok {
		changed = t.unhealthy.CompareAndSwap(true, false)
		if t.reached() {
			changed = true
		}
		return changed
	}
	return t.unhealthy.CompareAndSwap(false, true)
}

// releaseStream ends a request, which was counted as a stream or not.
func (t *Target) releaseStream(stream bool) {
	if stream {
		t.streams.Add(-1)
	}
	t.inflight.Add(-1)
}

// DrainStats says how a drain ended.
type DrainStats struct {
	// Waited is how long the drain took.
	Waited time.Duration
	// Cut is how many requests were still in flight when the drain ran
	// out of time and their connections were closed.
	Cut int64
}

// drain stops new requests reaching t, waits for those in flight, and
// cuts what is left after timeout (or after streamGrace when only
// websockets and streams are left).
func (t *Target) drain(ctx context.Context, timeout, streamGrace time.Duration) DrainStats {
	start := time.Now()
	t.draining.Store(true)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	var stats DrainStats
	for {
		n := t.inflight.Load()
		if n == 0 {
			break
		}
		elapsed := time.Since(start)
		onlyStreams := n == t.streams.Load()
		if elapsed >= timeout || (onlyStreams && elapsed >= streamGrace) || ctx.Err() != nil {
			stats.Cut = n
			t.cut.Store(true)
			t.conns.closeAll()
			// Cut requests unwind quickly; wait a little for them so the
			// container is not stopped under their feet.
			waitUntil(func() bool { return t.inflight.Load() == 0 }, time.Second)
			break
		}
		<-tick.C
	}
	t.pool.closeIdle()
	stats.Waited = time.Since(start)
	return stats
}

func waitUntil(cond func() bool, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
}

// connTracker dials upstream connections and remembers them, so that all
// of a target's connections, pooled or upgraded, can be closed at once.
type connTracker struct {
	dialer net.Dialer
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
}

// DialContext dials and tracks a connection.
func (c *connTracker) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: conn, tracker: c}
	c.mu.Lock()
	if c.conns == nil {
		c.conns = map[*trackedConn]struct{}{}
	}
	c.conns[tc] = struct{}{}
	c.mu.Unlock()
	return tc, nil
}

func (c *connTracker) closeAll() {
	c.mu.Lock()
	conns := make([]*trackedConn, 0, len(c.conns))
	for tc := range c.conns {
		conns = append(conns, tc)
	}
	c.mu.Unlock()
	for _, tc := range conns {
		tc.Close()
	}
}

type trackedConn struct {
	net.Conn
	tracker *connTracker
	once    sync.Once
}

func (tc *trackedConn) Close() error {
	tc.once.Do(func() {
		tc.tracker.mu.Lock()
		delete(tc.tracker.conns, tc)
		tc.tracker.mu.Unlock()
	})
	return tc.Conn.Close()
}

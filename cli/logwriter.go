package cli

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// bufferedLog is the agent's log output. The proxy writes a line to it on
// every request (the access log), so a Write never does I/O and never
// waits for it: it appends the line to a queue in memory under a short
// lock. A goroutine of its own writes the queue out, in large writes, at
// least every interval and as soon as a batch has gathered. When the
// output does not keep up (a full disk, a stalled journal, a terminal
// paused) and maxQueued bytes wait, further lines are dropped and counted,
// never blocking a request; Close says how many.
//
// Lines are never split: slog and the access log write whole lines.
type bufferedLog struct {
	out       io.Writer
	interval  time.Duration
	maxQueued int

	mu      sync.Mutex
	queued  []byte
	spare   []byte
	closing bool

	kick    chan struct{}
	done    chan struct{}
	dropped atomic.Uint64
}

// batchBytes is how much a Write lets gather before it wakes the writer
// ahead of its interval.
const batchBytes = 64 << 10

func newBufferedLog(w io.Writer, interval time.Duration) *bufferedLog {
	b := &bufferedLog{out: w, interval: interval, maxQueued: 8 << 20, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go b.run()
	return b
}

// Write queues p. It never blocks on the output and always reports
// success: a line it has to drop is counted (Dropped).
func (b *bufferedLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	if len(b.queued)+len(p) > b.maxQueued {
		b.mu.Unlock()
		b.dropped.Add(1)
		return len(p), nil
	}
	b.queued = append(b.queued, p...)
	full := len(b.queued) >= batchBytes
	b.mu.Unlock()
	if full {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// Dropped is how many lines were dropped because the output did not keep
// up.
func (b *bufferedLog) Dropped() uint64 { return b.dropped.Load() }

// run writes the queue out until Close.
func (b *bufferedLog) run() {
	defer close(b.done)
	t := time.NewTicker(b.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-b.kick:
		}
		if !b.writeOut() {
			return
		}
	}
}

// writeOut writes what is queued, outside the lock, and reports whether
// to go on.
func (b *bufferedLog) writeOut() bool {
	b.mu.Lock()
	batch := b.queued
	b.queued = b.spare[:0]
	closing := b.closing
	b.mu.Unlock()
	if len(batch) > 0 {
		b.out.Write(batch)
	}
	b.mu.Lock()
	if cap(batch) <= 4*batchBytes {
		b.spare = batch // a burst's large buffer is let go
	} else {
		b.spare = nil
	}
	b.mu.Unlock()
	return !closing
}

// Close writes out what is queued and stops the writer. It says how many
// lines were dropped, if any, as the last line.
func (b *bufferedLog) Close() {
	b.mu.Lock()
	b.closing = true
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	<-b.done
	if n := b.dropped.Load(); n > 0 {
		b.out.Write(droppedLine(n))
	}
}

// droppedLine is the log line Close ends with when lines were dropped, in
// the agent's JSON log format.
func droppedLine(n uint64) []byte {
	return fmt.Appendf(nil, `{"time":%q,"level":"WARN","msg":"log lines were dropped: the log output did not keep up (see sprout_log_lines_dropped_total)","dropped":%d}`+"\n", time.Now().Format(time.RFC3339Nano), n)
}

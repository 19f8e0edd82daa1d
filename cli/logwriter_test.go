package cli

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// stalledWriter blocks every Write until released, as a stalled journal
// or a paused terminal does.
type stalledWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// The request path writes access-log lines: a stalled output must never
// block it. Lines past the bound are dropped, counted and said at Close;
// the ones kept come out whole and in order.
func TestLogWriterNeverBlocks(t *testing.T) {
	out := &stalledWriter{release: make(chan struct{})}
	b := newBufferedLog(out, 5*time.Millisecond)
	b.maxQueued = 64 << 10
	line := func(i int) string { return fmt.Sprintf("{\"n\":%06d,\"pad\":%q}\n", i, strings.Repeat("x", 80)) }

	start := time.Now()
	const n = 5000 // about 500 kB: the output stalls with the first batch
	for i := range n {
		b.Write([]byte(line(i)))
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("%d writes to a stalled output took %v", n, took)
	}
	if b.Dropped() == 0 {
		t.Fatalf("nothing dropped with the output stalled and %d bytes written past a bound of %d", n*len(line(0)), b.maxQueued)
	}
	close(out.release)
	b.Close()

	lines := strings.Split(strings.TrimSuffix(out.buf.String(), "\n"), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, `"msg":"log lines were dropped`) || !strings.Contains(last, fmt.Sprintf(`"dropped":%d`, b.Dropped())) {
		t.Errorf("last line %q does not say how many were dropped (%d)", last, b.Dropped())
	}
	kept := lines[:len(lines)-1]
	if uint64(len(kept))+b.Dropped() != n {
		t.Errorf("%d kept + %d dropped != %d written", len(kept), b.Dropped(), n)
	}
	prev := -1
	for _, l := range kept {
		var i int
		if _, err := fmt.Sscanf(l, `{"n":%d,`, &i); err != nil || l+"\n" != line(i) {
			t.Fatalf("line %q is not whole", l)
		}
		if i <= prev {
			t.Fatalf("line %d after %d: out of order", i, prev)
		}
		prev = i
	}
}

// With an output that keeps up, nothing is dropped and everything is out
// by Close.
func TestLogWriterWritesEverything(t *testing.T) {
	var out stalledWriter
	out.release = make(chan struct{})
	close(out.release)
	b := newBufferedLog(&out, time.Hour) // only batches and Close write
	for i := range 20000 {
		fmt.Fprintf(b, "line %d\n", i)
	}
	b.Close()
	if b.Dropped() != 0 || strings.Count(out.buf.String(), "\n") != 20000 {
		t.Errorf("dropped %d, wrote %d lines", b.Dropped(), strings.Count(out.buf.String(), "\n"))
	}
}

package health

import (
	"math"
	"sync/atomic"
	"time"
)

// Window counts an app's requests over the last few minutes, by status
// class and latency, in ten-second buckets. Recording is a few atomic adds,
// so the proxy can call it on every request.
type Window struct {
	buckets [windowBuckets]bucket
	now     func() time.Time
}

// Resolution is the width of a window's buckets: Stats covers whole
// buckets.
const Resolution = bucketSpan

const (
	bucketSpan    = 10 * time.Second
	windowBuckets = 31 // five minutes, plus the bucket being filled
	// latencyBounds are the upper bounds, in milliseconds, of the latency
	// histogram; the last bucket holds everything slower.
	latencyBuckets = 28
)

var latencyBounds = func() (b [latencyBuckets]float64) {
	v := 0.5
	for i := range b {
		b[i] = v
		v *= 1.5
	}
	return // 0.5 ms … about 28 s
}()

type bucket struct {
	epoch   atomic.Int64 // the bucket's start, in bucketSpan units
	classes [5]atomic.Int64
	latency [latencyBuckets + 1]atomic.Int64
}

// NewWindow returns an empty window.
func NewWindow() *Window { return &Window{now: time.Now} }

func (w *Window) bucket(t time.Time) *bucket {
	epoch := t.UnixNano() / int64(bucketSpan)
	b := &w.buckets[epoch%windowBuckets]
	if old := b.epoch.Load(); old != epoch && b.epoch.CompareAndSwap(old, epoch) {
		// This slot last held a bucket from a few minutes ago: reuse it.
		// A request racing the reset may be lost; these are statistics.
		for i := range b.classes {
			b.classes[i].Store(0)
		}
		for i := range b.latency {
			b.latency[i].Store(0)
		}
	}
	return b
}

// Record counts one request.
func (w *Window) Record(status int, took time.Duration) {
	b := w.bucket(w.now())
	class := status/100 - 1
	if class < 0 || class > 4 {
		class = 4
	}
	b.classes[class].Add(1)
	ms := float64(took) / float64(time.Millisecond)
	i := 0
	for i < latencyBuckets && ms > latencyBounds[i] {
		i++
	}
	b.latency[i].Add(1)
}

// Stats summarises a window.
type Stats struct {
	// Span is the time the counts cover.
	Span     time.Duration `json:"span"`
	Requests int64         `json:"requests"`
	// Classes counts 1xx to 5xx.
	Classes [5]int64 `json:"classes"`
	// P50, P90 and P99 are latency percentiles (bucket upper bounds).
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P99 time.Duration `json:"p99"`
}

// Rate is requests per second over the span.
func (s Stats) Rate() float64 {
	if s.Span <= 0 {
		return 0
	}
	return float64(s.Requests) / s.Span.Seconds()
}

// Share is the fraction of requests in a status class (2 for 2xx).
func (s Stats) Share(class int) float64 {
	if s.Requests == 0 || class < 1 || class > 5 {
		return 0
	}
	return float64(s.Classes[class-1]) / float64(s.Requests)
}

// Stats sums the buckets of the last span (at most five minutes).
func (w *Window) Stats(span time.Duration) Stats {
	now := w.now()
	cur := now.UnixNano() / int64(bucketSpan)
	n := int64(math.Ceil(float64(span) / float64(bucketSpan)))
	n = min(max(n, 1), windowBuckets-1)
	var st Stats
	var lat [latencyBuckets + 1]int64
	first := int64(-1)
	for e := cur - n + 1; e <= cur; e++ {
		b := &w.buckets[e%windowBuckets]
		if b.epoch.Load() != e {
			continue
		}
		if first < 0 {
			first = e
		}
		for i := range b.classes {
			c := b.classes[i].Load()
			st.Classes[i] += c
			st.Requests += c
		}
		for i := range b.latency {
			lat[i] += b.latency[i].Load()
		}
	}
	// The span runs from the oldest bucket with data, so that the rate of
	// a new app is not diluted over minutes it did not exist.
	if first >= 0 {
		st.Span = now.Sub(time.Unix(0, first*int64(bucketSpan)))
	}
	var total int64
	for _, c := range lat {
		total += c
	}
	pct := func(p float64) time.Duration {
		if total == 0 {
			return 0
		}
		want := int64(math.Ceil(p * float64(total)))
		var seen int64
		for i, c := range lat {
			seen += c
			if seen >= want {
				if i == latencyBuckets {
					i--
				}
				return time.Duration(latencyBounds[i] * float64(time.Millisecond))
			}
		}
		return 0
	}
	st.P50, st.P90, st.P99 = pct(.5), pct(.9), pct(.99)
	return st
}

package health

import (
	"strings"
	"testing"
	"time"
)

func TestWindowStats(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	w := NewWindow()
	w.now = func() time.Time { return now }
	for i := range 100 {
		status := 200
		if i < 5 {
			status = 503
		}
		w.Record(status, time.Duration(i+1)*time.Millisecond)
	}
	st := w.Stats(5 * time.Minute)
	if st.Requests != 100 || st.Classes[1] != 95 || st.Classes[4] != 5 {
		t.Fatalf("stats = %+v", st)
	}
	if st.P50 < 40*time.Millisecond || st.P50 > 80*time.Millisecond || st.P99 < 99*time.Millisecond || st.P99 > 160*time.Millisecond {
		t.Errorf("percentiles p50=%s p99=%s", st.P50, st.P99)
	}
	// Six minutes later the old requests are out of the window.
	now = now.Add(6 * time.Minute)
	w.Record(200, time.Millisecond)
	if st := w.Stats(5 * time.Minute); st.Requests != 1 {
		t.Errorf("after the window slid: %+v", st)
	}
}

func TestEvaluate(t *testing.T) {
	now := time.Now()
	ok := Input{Serving: true, Container: "running", ChecksRun: true, Now: now, Stats: Stats{Span: 5 * time.Minute, Requests: 1000, Classes: [5]int64{0, 1000}}}
	cases := []struct {
		name   string
		mod    func(*Input)
		status string
		cause  string
	}{
		{"healthy", func(*Input) {}, Ok, ""},
		{"no version", func(in *Input) { in.Serving = false }, NoData, "no version is serving"},
		{"first deploy", func(in *Input) { in.Serving, in.Deploying = false, true }, Pending, "first deploy"},
		{"deploying", func(in *Input) { in.Deploying = true }, Info, "deploy is in progress"},
		{"12% 5xx", func(in *Input) { in.Stats.Classes = [5]int64{0, 880, 0, 0, 120} }, Severe, "12% of requests failed with 5xx in the last 5m0s"},
		{"6% 5xx", func(in *Input) { in.Stats.Classes = [5]int64{0, 940, 0, 0, 60} }, Degraded, "6.0% of requests failed with 5xx"},
		{"2% 5xx", func(in *Input) { in.Stats.Classes = [5]int64{0, 980, 0, 0, 20} }, Warning, "2.0% of requests"},
		{"few requests do not count", func(in *Input) { in.Stats = Stats{Requests: 3, Classes: [5]int64{0, 0, 0, 0, 3}} }, Ok, ""},
		{"restarts", func(in *Input) { in.Restarts = 3 }, Degraded, "container restarted 3 times in 10m0s"},
		{"check failing briefly", func(in *Input) { in.CheckFailingSince = now.Add(-10 * time.Second) }, Degraded, "health check failing for 10s"},
		{"check failing long", func(in *Input) { in.CheckFailingSince = now.Add(-45 * time.Second) }, Severe, "health check failing for 45s"},
		{"container exited", func(in *Input) { in.Container = "exited (1)" }, Severe, "the container is exited (1)"},
		{"slow", func(in *Input) { in.Stats.P99 = 3 * time.Second }, Warning, "p99 latency is 3s"},
		{"quiet start", func(in *Input) { in.ChecksRun, in.Stats = false, Stats{} }, NoData, "no requests"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := ok
			tc.mod(&in)
			status, causes := Evaluate(in, DefaultRules)
			if status != tc.status || (tc.cause != "" && !strings.Contains(strings.Join(causes, "; "), tc.cause)) || (tc.cause == "" && len(causes) > 0) {
				t.Errorf("got %s %q, want %s %q", status, causes, tc.status, tc.cause)
			}
		})
	}
}

package rollout

import (
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/health"
)

func stats(requests, errors5xx int64, p99 time.Duration) health.Stats {
	return health.Stats{Requests: requests, Classes: [5]int64{1: requests - errors5xx, 4: errors5xx}, P99: p99}
}

func TestJudge(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name        string
		canary, old health.Stats
		worse       bool
		says        string
	}{
		{"healthy canary", stats(100, 0, 10*ms), stats(900, 0, 10*ms), false, "not clearly worse"},
		{"too few requests", stats(19, 10, 10*ms), stats(900, 0, 10*ms), false, "too few to compare"},
		{"5xx clearly worse", stats(100, 10, 10*ms), stats(900, 0, 10*ms), true, "5xx share 10.0% is clearly worse than 0.0%"},
		{"5xx under the point", stats(1000, 9, 10*ms), stats(900, 0, 10*ms), false, "not clearly worse"},
		{"both fail alike", stats(100, 10, 10*ms), stats(900, 80, 10*ms), false, "not clearly worse"},
		{"twice as bad and a point more", stats(100, 20, 10*ms), stats(900, 90, 10*ms), true, "20.0% is clearly worse than 10.0%"},
		{"two errors are not a trend", stats(100, 2, 10*ms), stats(900, 0, 10*ms), false, "not clearly worse"},
		{"slow canary", stats(100, 0, 200*ms), stats(900, 0, 10*ms), true, "p99 200ms is clearly worse than 10ms"},
		{"a little slower", stats(100, 0, 60*ms), stats(900, 0, 10*ms), false, "not clearly worse"},
		{"slow but nothing to compare", stats(100, 0, 200*ms), stats(5, 0, 10*ms), false, "not clearly worse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Judge("v2", tc.canary, "v1", tc.old)
			if v.Worse != tc.worse || !strings.Contains(v.Reason, tc.says) || !strings.Contains(v.Reason, "v2: ") || !strings.Contains(v.Reason, "v1: ") {
				t.Errorf("Judge = %+v, want worse=%v saying %q and both versions' figures", v, tc.worse, tc.says)
			}
		})
	}
}

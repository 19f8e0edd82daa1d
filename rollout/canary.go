package rollout

import (
	"fmt"
	"time"

	"github.com/sprout-paas/sprout/health"
)

// The canary rule. A TrafficSplitting canary is compared with the version
// it would replace over the same window, from the proxy's own per-version
// counts. It is clearly worse, and rolled back, when either:
//   - its 5xx share is at least CanaryMarginPoints percentage points above
//     the old version's and at least twice it, from at least
//     CanaryMin5xx of its requests; or
//   - its p99 latency is more than twice the old version's plus
//     CanaryLatencyMargin, with at least MinCanaryRequests requests on
//     each side.
//
// With fewer than MinCanaryRequests requests the canary cannot be judged:
// it was healthy on its checks, so it is promoted, and the verdict says
// so.
const (
	MinCanaryRequests   = 20
	CanaryMin5xx        = 3
	CanaryMarginPoints  = 1.0
	CanaryLatencyMargin = 50 * time.Millisecond
)

// Verdict is the outcome of a canary's evaluation, in words.
type Verdict struct {
	// Worse means the canary is clearly worse: roll it back.
	Worse bool
	// Reason says what decided, with the figures.
	Reason string
	// Figures are both versions' requests, 5xx share and p99.
	Figures string
}

// Judge compares a canary's requests with the old version's over the
// same window.
func Judge(canaryLabel string, canary health.Stats, oldLabel string, old health.Stats) Verdict {
	figures := fmt.Sprintf("%s: %s; %s: %s", canaryLabel, describe(canary), oldLabel, describe(old))
	v := judge(canaryLabel, canary, old, figures)
	v.Figures = figures
	return v
}

func judge(canaryLabel string, canary, old health.Stats, figures string) Verdict {
	if canary.Requests < MinCanaryRequests {
		return Verdict{Reason: fmt.Sprintf("%s: only %d requests reached %s, too few to compare (%d needed); promoted on its health checks", figures, canary.Requests, canaryLabel, MinCanaryRequests)}
	}
	c5, o5 := 100*canary.Share(5), 100*old.Share(5)
	if canary.Classes[4] >= CanaryMin5xx && c5 >= o5+CanaryMarginPoints && c5 >= 2*o5 {
		return Verdict{Worse: true, Reason: fmt.Sprintf("%s: %s's 5xx share %.1f%% is clearly worse than %.1f%% (at least %.0f point above and twice it)", figures, canaryLabel, c5, o5, CanaryMarginPoints)}
	}
	if old.Requests >= MinCanaryRequests && canary.P99 > 2*old.P99+CanaryLatencyMargin {
		return Verdict{Worse: true, Reason: fmt.Sprintf("%s: %s's p99 %s is clearly worse than %s (more than twice it plus %s)", figures, canaryLabel, canary.P99, old.P99, CanaryLatencyMargin)}
	}
	return Verdict{Reason: figures + ": not clearly worse; promoted"}
}

func describe(s health.Stats) string {
	return fmt.Sprintf("%d requests, 5xx %.1f%%, p99 %s", s.Requests, 100*s.Share(5), s.P99.Round(10*time.Microsecond))
}

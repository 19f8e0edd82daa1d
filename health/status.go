package health

import (
	"fmt"
	"time"
)

// Statuses, in Elastic Beanstalk's enhanced-health vocabulary.
const (
	Ok       = "Ok"
	Info     = "Info"
	Warning  = "Warning"
	Degraded = "Degraded"
	Severe   = "Severe"
	Pending  = "Pending"
	Unknown  = "Unknown"
	NoData   = "NoData"
)

// AllStatuses lists every status, for a gauge per status.
var AllStatuses = []string{Ok, Info, Warning, Degraded, Severe, Pending, Unknown, NoData}

var severity = map[string]int{NoData: 0, Unknown: 0, Pending: 1, Ok: 1, Info: 2, Warning: 3, Degraded: 4, Severe: 5}

// Rules are the thresholds of the status rules (see the README).
type Rules struct {
	// Window is how far back request statistics look.
	Window time.Duration `json:"window"`
	// MinRequests is how many requests the window needs before its error
	// shares count.
	MinRequests int64 `json:"min_requests"`
	// Shares of 5xx responses that make an app Warning, Degraded, Severe.
	Warning5xx  float64 `json:"warning_5xx"`
	Degraded5xx float64 `json:"degraded_5xx"`
	Severe5xx   float64 `json:"severe_5xx"`
	// Warning4xx is the share of 4xx responses that makes an app Warning.
	Warning4xx float64 `json:"warning_4xx"`
	// WarningP99 is the p99 latency that makes an app Warning.
	WarningP99 time.Duration `json:"warning_p99"`
	// Restarts of the container within RestartWindow that make an app
	// Warning and Degraded.
	RestartWindow    time.Duration `json:"restart_window"`
	WarningRestarts  int           `json:"warning_restarts"`
	DegradedRestarts int           `json:"degraded_restarts"`
	// SevereCheckFailing is how long a failing health check takes to make
	// an app Severe (before that it is Degraded).
	SevereCheckFailing time.Duration `json:"severe_check_failing"`
}

// DefaultRules are the rules unless configured otherwise.
var DefaultRules = Rules{
	Window: 5 * time.Minute, MinRequests: 10,
	Warning5xx: 0.01, Degraded5xx: 0.05, Severe5xx: 0.10,
	Warning4xx:    0.25,
	WarningP99:    2 * time.Second,
	RestartWindow: 10 * time.Minute, WarningRestarts: 1, DegradedRestarts: 3,
	SevereCheckFailing: 30 * time.Second,
}

// Input is what an app's status is computed from.
type Input struct {
	Serving   bool
	Deploying bool
	// Container is "running", "restarting", "exited (N)", "missing" or "none".
	Container string
	// Restarts counts the container's restarts within the rules' window.
	Restarts int
	// CheckFailingSince is when the serving container's health check
	// began failing; zero while it passes.
	CheckFailingSince time.Time
	// ChecksRun tells whether the monitor has checked the container yet.
	ChecksRun bool
	Stats     Stats
	Now       time.Time
}

// Worst returns the more severe of two statuses (a when they weigh the
// same).
func Worst(a, b string) string {
	if severity[b] > severity[a] {
		return b
	}
	return a
}

// Evaluate returns the app's status and, for anything but Ok, its causes
// in words. The worst rule that applies sets the status.
func Evaluate(in Input, r Rules) (string, []string) {
	status := Ok
	var causes []string
	raise := func(s, format string, args ...any) {
		causes = append(causes, fmt.Sprintf(format, args...))
		if severity[s] > severity[status] {
			status = s
		}
	}
	if !in.Serving {
		if in.Deploying {
			return Pending, []string{"the first deploy is in progress"}
		}
		return NoData, []string{"no version is serving"}
	}
	if in.Deploying {
		raise(Info, "a deploy is in progress")
	}
	switch in.Container {
	case "running":
	case "restarting":
		raise(Severe, "the container is restarting")
	default:
		raise(Severe, "the container is %s", in.Container)
	}
	if !in.CheckFailingSince.IsZero() {
		failing := in.Now.Sub(in.CheckFailingSince).Round(time.Second)
		if failing >= r.SevereCheckFailing {
			raise(Severe, "health check failing for %s", failing)
		} else {
			raise(Degraded, "health check failing for %s", failing)
		}
	}
	if in.Restarts >= r.DegradedRestarts {
		raise(Degraded, "container restarted %d times in %s", in.Restarts, r.RestartWindow)
	} else if in.Restarts >= r.WarningRestarts && r.WarningRestarts > 0 {
		raise(Warning, "container restarted %d times in %s", in.Restarts, r.RestartWindow)
	}
	st := in.Stats
	if st.Requests >= r.MinRequests {
		window := st.Span.Round(time.Second)
		if share := st.Share(5); share >= r.Severe5xx {
			raise(Severe, "%.0f%% of requests failed with 5xx in the last %s", share*100, window)
		} else if share >= r.Degraded5xx {
			raise(Degraded, "%.1f%% of requests failed with 5xx in the last %s", share*100, window)
		} else if share >= r.Warning5xx {
			raise(Warning, "%.1f%% of requests failed with 5xx in the last %s", share*100, window)
		}
		if share := st.Share(4); share >= r.Warning4xx {
			raise(Warning, "%.0f%% of requests got 4xx in the last %s", share*100, window)
		}
		if r.WarningP99 > 0 && st.P99 >= r.WarningP99 {
			raise(Warning, "p99 latency is %s in the last %s", st.P99.Round(time.Millisecond), window)
		}
	}
	if status == Ok && !in.ChecksRun && st.Requests == 0 {
		return NoData, []string{"no requests or health checks yet"}
	}
	return status, causes
}

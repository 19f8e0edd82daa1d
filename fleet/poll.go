package fleet

import (
	"time"

	"github.com/sprout-paas/sprout/rollout"
)

// The polling figures; docs/fleet.md derives the 2 s bound from them: a
// batch starts within FastPollMax (an evaluator's next poll), plus four
// requests, plus FastPollMax (the next batch's hosts' next poll) of the
// previous batch turning stable.
const (
	// FastPollMin and FastPollMax bound the poll of rollout.json while a
	// rollout is in flight.
	FastPollMin = 250 * time.Millisecond
	FastPollMax = 500 * time.Millisecond
	// SlowPollMin and SlowPollMax bound it when none is: a rollout's
	// first batch starts within SlowPollMax of its publication. A
	// conditional GET answered 304 is the cheapest request S3 has: 20
	// idle hosts make about 7 a second.
	SlowPollMin = 2 * time.Second
	SlowPollMax = 4 * time.Second
	// EvaluateEvery is how often a host outside the started batches
	// evaluates a rollout in flight (it lists hosts/, which costs more
	// than a GET), so that the rollout moves on even if every started
	// host dies.
	EvaluateEvery = 10 * time.Second
	// HeartbeatInFlight and HeartbeatIdle are the longest a host goes
	// without writing its report, with and without a rollout in flight.
	HeartbeatInFlight = 5 * time.Second
	HeartbeatIdle     = 60 * time.Second
	// AliveWithin is how recent a report must be for its host to be part
	// of a rollout published now: three idle heartbeats.
	AliveWithin = 3 * HeartbeatIdle
	// maxTrafficSpan is the longest span the proxy's window keeps.
	maxTrafficSpan = 5 * time.Minute
	// idleTrafficSpan is the span of the traffic figures outside a
	// canary's evaluation, for status.
	idleTrafficSpan = time.Minute
)

// inFlight tells whether r is a rollout in flight.
func inFlight(r *Rollout) bool { return r != nil && !r.State.Terminal() }

// between returns lo + u·(hi-lo): u, from rand.Float64, spreads a fleet
// started together so that it does not poll in step.
func between(lo, hi time.Duration, u float64) time.Duration {
	return lo + time.Duration(u*float64(hi-lo))
}

// PollInterval is how long a host waits before it reads rollout.json
// again; u is a uniform random number in [0, 1).
func PollInterval(r *Rollout, u float64) time.Duration {
	if inFlight(r) {
		return between(FastPollMin, FastPollMax, u)
	}
	return between(SlowPollMin, SlowPollMax, u)
}

// Heartbeat is the longest a host goes without writing its report; u as
// for PollInterval takes up to a fifth off, to spread the writes.
func Heartbeat(r *Rollout, u float64) time.Duration {
	d := HeartbeatIdle
	if inFlight(r) {
		d = HeartbeatInFlight
	}
	return between(d*4/5, d, u)
}

// Evaluates tells whether host should compute Next now, sinceLast after
// its previous evaluation: at every poll while it is in a started batch
// of the rollout in flight (it has a stake in the next step and is alive),
// and otherwise once every EvaluateEvery, so that the rollout moves on even
// when every started host is gone. Any evaluator computes the same thing;
// this only spares requests.
func Evaluates(r *Rollout, host string, sinceLast time.Duration) bool {
	if !inFlight(r) {
		return false
	}
	st, ok := r.Hosts[host]
	if ok && st.State != HostPending && st.State != HostLost {
		return true
	}
	return sinceLast >= EvaluateEvery
}

// TrafficSpan is the span a host's Traffic figures cover: the canary's
// evaluation time (at most the five minutes the proxy keeps) while a
// TrafficSplitting rollout is in flight, else a minute.
func TrafficSpan(r *Rollout) time.Duration {
	if inFlight(r) && r.Settings.Policy == rollout.TrafficSplitting {
		return min(time.Duration(r.Settings.EvaluationTime), maxTrafficSpan)
	}
	return idleTrafficSpan
}

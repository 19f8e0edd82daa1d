package fleet

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/rollout"
)

// doc publishes v2 of web at t0 over n hosts that serve v1, the last
// good version, then lets change set the state under test.
func doc(t *testing.T, st Settings, n int, change func(r *Rollout)) *Rollout {
	t.Helper()
	reports := map[string]HostReport{}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("h%d", i)
		reports[id] = HostReport{Host: id, ReportedAt: t0}
	}
	prev := &Rollout{ID: "before", Epoch: 1, State: StateSucceeded, Release: release("v1"), Good: map[string]Release{"web": release("v1")}}
	r, err := NewRollout(prev, Request{Release: release("v2"), Settings: st, By: "alice@laptop"}, reports, t0)
	if err != nil {
		t.Fatal(err)
	}
	if change != nil {
		change(r)
	}
	return r
}

// hosts sets the state of hosts.
func hosts(r *Rollout, st HostState, ids ...string) {
	for _, id := range ids {
		h := r.Hosts[id]
		h.State, h.Since = st, r.StepSince
		r.Hosts[id] = h
	}
}

// reps are the hosts' reports in a test.
type reps map[string]HostReport

// fresh has every host of r report at now, having read r, serving v1
// healthy for an hour.
func fresh(r *Rollout, now time.Time) reps {
	m := reps{}
	for id := range r.Hosts {
		m[id] = HostReport{Host: id, ReportedAt: now, Epoch: r.Epoch, Rollout: r.ID, Apps: map[string]AppReport{
			"web": {Serving: "v1", Phase: PhaseHealthy, HealthySince: t0.Add(-time.Hour)},
		}}
	}
	return m
}

// app sets what hosts ids report of web.
func (m reps) app(a AppReport, ids ...string) reps {
	for _, id := range ids {
		rep := m[id]
		rep.Apps = maps.Clone(rep.Apps)
		rep.Apps["web"] = a
		m[id] = rep
	}
	return m
}

// reported sets when hosts ids last reported.
func (m reps) reported(when time.Time, ids ...string) reps {
	for _, id := range ids {
		rep := m[id]
		rep.ReportedAt = when
		m[id] = rep
	}
	return m
}

// epoch sets the newest epoch hosts ids have read.
func (m reps) epoch(e int64, ids ...string) reps {
	for _, id := range ids {
		rep := m[id]
		rep.Epoch = e
		m[id] = rep
	}
	return m
}

func healthyOn(label string, since time.Time) AppReport {
	return AppReport{Serving: label, Phase: PhaseHealthy, HealthySince: since}
}

func failedOn(r *Rollout, label, why string) AppReport {
	return AppReport{Serving: "v1", Target: label, Phase: PhaseFailed, Rollout: r.ID, Error: why, HealthySince: t0.Add(-time.Hour)}
}

func withTraffic(a AppReport, label string, requests, errors5xx int64) AppReport {
	s := health.Stats{Span: time.Minute, Requests: requests, P99: 10 * time.Millisecond}
	s.Classes[4], s.Classes[1] = errors5xx, requests-errors5xx
	a.Traffic = &Traffic{Label: label, Stats: s}
	return a
}

func sec(n float64) time.Duration { return time.Duration(n * float64(time.Second)) }

// TestNext takes each transition of docs/fleet.md's table once, from a
// document in the state before it and the hosts' reports.
func TestNext(t *testing.T) {
	rolling := settings(rollout.Rolling, 2, rollout.Fixed) // h1 h2 | h3 h4 | h5
	immutable := settings(rollout.Immutable, 100, rollout.Percentage)
	canary := settings(rollout.TrafficSplitting, 100, rollout.Percentage)
	canary.NewVersionPercent, canary.EvaluationTime = 40, Duration(time.Minute) // h1 h2 | h3 h4 h5
	inBatch := func(b int) func(r *Rollout) {
		return func(r *Rollout) {
			r.Batch = b
			for i, batch := range r.Batches {
				switch {
				case i < b:
					hosts(r, HostHealthy, batch...)
				case i == b:
					hosts(r, HostMoving, batch...)
				}
			}
		}
	}
	state := func(s State, change func(r *Rollout)) func(r *Rollout) {
		return func(r *Rollout) {
			r.State = s
			if change != nil {
				change(r)
			}
		}
	}
	rollingBack := func(r *Rollout) {
		inBatch(1)(r)
		r.State, r.Reason, r.Epoch = StateRollingBack, "h3 failed in batch 2 of 3: boom", r.Epoch+1
		r.RollbackEpoch = r.Epoch
		hosts(r, HostFailed, "h3")
	}

	for _, tc := range []struct {
		name     string
		r        *Rollout
		reports  func(r *Rollout, now time.Time) reps
		at       time.Duration // after t0
		watching time.Duration // the evaluator regained the store at t0 + watching
		// want is the state after; "" means no change.
		want  State
		hosts map[string]HostState
		why   string
	}{
		{
			name: "running: the batch is still moving",
			r:    doc(t, rolling, 5, nil),
			at:   sec(1),
		},
		{
			name: "running: healthy, not yet stable",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", now.Add(-sec(1.9))), "h1", "h2")
			},
			at: sec(3),
		},
		{
			name: "running: the batch is stable, the next one starts",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", now.Add(-sec(2))), "h1", "h2")
			},
			at:    sec(3),
			want:  StateRunning,
			hosts: map[string]HostState{"h1": HostHealthy, "h2": HostHealthy, "h3": HostMoving, "h4": HostMoving, "h5": HostPending},
			why:   "h1 healthy; h2 healthy; batch 2 of 3 started: h3, h4",
		},
		{
			name: "running: the last batch is stable, the version is good",
			r:    doc(t, rolling, 5, inBatch(2)),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1", "h2", "h3", "h4", "h5")
			},
			at:    sec(10),
			want:  StateSucceeded,
			hosts: map[string]HostState{"h5": HostHealthy},
			why:   "succeeded: v2 serves healthy on h1, h2, h3, h4, h5",
		},
		{
			name: "running: a host of the batch fails",
			r:    doc(t, rolling, 5, inBatch(1)),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1", "h2").app(failedOn(r, "v2", "health check failed"), "h4")
			},
			at:    sec(10),
			want:  StateRollingBack,
			hosts: map[string]HostState{"h4": HostFailed, "h3": HostMoving, "h5": HostPending},
			why:   "rolling back to v1: h4 failed in batch 2 of 3: health check failed",
		},
		{
			name: "running: a failure in an older rollout does not count",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				old := failedOn(r, "v2", "old failure")
				old.Rollout = "an-older-rollout"
				return fresh(r, now).app(old, "h1")
			},
			at: sec(10),
		},
		{
			name: "running: a host misses the host deadline",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1").app(AppReport{Serving: "v1", Target: "v2", Phase: PhaseDeploying, Rollout: r.ID}, "h2")
			},
			at:    DefaultHostDeadline + sec(1),
			want:  StateRollingBack,
			hosts: map[string]HostState{"h2": HostFailed},
			why:   "h2 failed in batch 1 of 3: it did not get v2 healthy within the host deadline (10m0s)",
		},
		{
			name: "running: a stable host turns unhealthy",
			r:    doc(t, rolling, 5, inBatch(1)),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(AppReport{Serving: "v2", Phase: PhaseUnhealthy}, "h1")
			},
			at:    sec(10),
			want:  StateRollingBack,
			hosts: map[string]HostState{"h1": HostFailed},
			why:   "h1 failed in batch 2 of 3: v2 turned unhealthy on h1 after it was stable",
		},
		{
			name: "running: a silent host is lost, and its batch goes on without it",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1").reported(t0.Add(sec(1)), "h2")
			},
			at:    sec(40),
			want:  StateRunning,
			hosts: map[string]HostState{"h1": HostHealthy, "h2": HostLost, "h3": HostMoving},
			why:   "h2 lost: no report since 2025-01-01T12:00:01Z (39s before); left out; h1 healthy; batch 2 of 3 started: h3, h4",
		},
		{
			name: "running: a host that never reported is lost",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				m := fresh(r, now).app(healthyOn("v2", t0), "h1", "h2")
				delete(m, "h5")
				return m
			},
			at:    sec(40),
			want:  StateRunning,
			hosts: map[string]HostState{"h5": HostLost},
			why:   "h5 lost: no report in this rollout; left out",
		},
		{
			name: "running: no host is lost while the evaluator has only just regained the store",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0, "h1", "h2", "h3", "h4", "h5")
			},
			at:       sec(120),
			watching: sec(100),
		},
		{
			name: "running: lost counts from publication, not from an idle host's last heartbeat",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0.Add(-2*time.Minute), "h5")
			},
			at: sec(29),
		},
		{
			name: "running: every host of a batch is lost, the next batch starts",
			r:    doc(t, rolling, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0, "h1", "h2")
			},
			at:    sec(31),
			want:  StateRunning,
			hosts: map[string]HostState{"h1": HostLost, "h2": HostLost, "h3": HostMoving},
			why:   "batch 2 of 3 started: h3, h4",
		},
		{
			name: "running: every host lost, none healthy: the version is not good",
			r:    doc(t, rolling, 5, inBatch(2)),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0, "h1", "h2", "h3", "h4", "h5")
			},
			at:   sec(31),
			want: StateFailed,
			why:  "every host of the rollout was lost: v2 was served healthy nowhere, so it is not recorded as good",
		},
		{
			name: "running: the canary is stable, its evaluation begins",
			r:    doc(t, canary, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1", "h2")
			},
			at:    sec(5),
			want:  StateEvaluating,
			hosts: map[string]HostState{"h3": HostPending},
			why:   "canary h1, h2 stable: evaluating v2 for 1m0s",
		},
		{
			name: "running: every canary host lost, nothing to judge by",
			r:    doc(t, canary, 5, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0, "h1", "h2")
			},
			at:   sec(31),
			want: StateRollingBack,
			why:  "rolling back to v1: every canary host was lost: nothing is left to judge v2 by",
		},
		{
			name: "evaluating: the evaluation time has not passed",
			r:    doc(t, canary, 5, state(StateEvaluating, func(r *Rollout) { hosts(r, HostHealthy, "h1", "h2") })),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1", "h2")
			},
			at: sec(59),
		},
		{
			name: "evaluating: it waits for figures that cover the whole evaluation",
			r:    doc(t, canary, 5, state(StateEvaluating, func(r *Rollout) { hosts(r, HostHealthy, "h1", "h2") })),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1", "h2").reported(t0.Add(sec(59)), "h4")
			},
			at: sec(61),
		},
		{
			name: "evaluating: a canary host fails",
			r:    doc(t, canary, 5, state(StateEvaluating, func(r *Rollout) { hosts(r, HostHealthy, "h1", "h2") })),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1").app(AppReport{Serving: "v2", Phase: PhaseUnhealthy}, "h2")
			},
			at:    sec(30),
			want:  StateRollingBack,
			hosts: map[string]HostState{"h2": HostFailed},
			why:   "h2 failed during the canary's evaluation",
		},
		{
			name: "evaluating: every canary host lost",
			r:    doc(t, canary, 5, state(StateEvaluating, func(r *Rollout) { hosts(r, HostHealthy, "h1", "h2") })),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0, "h1", "h2")
			},
			at:   sec(31),
			want: StateRollingBack,
			why:  "every canary host was lost during the evaluation",
		},
		{
			name: "evaluating: the canary is not worse, the other hosts follow",
			r:    doc(t, canary, 5, state(StateEvaluating, func(r *Rollout) { hosts(r, HostHealthy, "h1", "h2") })),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(withTraffic(healthyOn("v2", t0), "v2", 100, 0), "h1", "h2").app(withTraffic(healthyOn("v1", t0), "v1", 100, 0), "h3", "h4", "h5")
			},
			at:    sec(61),
			want:  StateRunning,
			hosts: map[string]HostState{"h3": HostMoving, "h4": HostMoving, "h5": HostMoving},
			why:   "canary promoted: v2: 200 requests, 5xx 0.0%, p99 10ms; v1: 300 requests, 5xx 0.0%, p99 10ms: not clearly worse; promoted; batch 2 of 2 started: h3, h4, h5",
		},
		{
			name: "evaluating: the canary is clearly worse",
			r:    doc(t, canary, 5, state(StateEvaluating, func(r *Rollout) { hosts(r, HostHealthy, "h1", "h2") })),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(withTraffic(healthyOn("v2", t0), "v2", 100, 30), "h1", "h2").app(withTraffic(healthyOn("v1", t0), "v1", 100, 0), "h3", "h4", "h5")
			},
			at:   sec(61),
			want: StateRollingBack,
			why:  "rolling back to v1: the canary is clearly worse: v2: 200 requests, 5xx 30.0%",
		},
		{
			name: "evaluating: no other host has figures, promoted on its health checks",
			r:    doc(t, canary, 5, state(StateEvaluating, func(r *Rollout) { hosts(r, HostHealthy, "h1", "h2") })),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(withTraffic(healthyOn("v2", t0), "v2", 100, 30), "h1", "h2")
			},
			at:   sec(61),
			want: StateRunning,
			why:  "no other host served the last good version to compare v2 with; promoted on its health checks",
		},
		{
			name: "preparing: some hosts are not ready",
			r:    doc(t, immutable, 3, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(AppReport{Serving: "v1", Target: "v2", Phase: PhasePrepared, Rollout: r.ID}, "h1", "h2")
			},
			at:    sec(5),
			want:  StatePreparing,
			hosts: map[string]HostState{"h1": HostPrepared, "h2": HostPrepared, "h3": HostMoving},
			why:   "h1 prepared; h2 prepared",
		},
		{
			name: "preparing: every host is ready, they switch",
			r:    doc(t, immutable, 3, func(r *Rollout) { hosts(r, HostPrepared, "h1", "h2") }),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(AppReport{Serving: "v1", Target: "v2", Phase: PhasePrepared, Rollout: r.ID}, "h1", "h2", "h3")
			},
			at:    sec(5),
			want:  StateSwitching,
			hosts: map[string]HostState{"h1": HostMoving, "h2": HostMoving, "h3": HostMoving},
			why:   "every host has v2 ready: switching h1, h2, h3",
		},
		{
			name: "preparing: a host fails, none switches",
			r:    doc(t, immutable, 3, func(r *Rollout) { hosts(r, HostPrepared, "h1", "h2") }),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(failedOn(r, "v2", "build failed"), "h3")
			},
			at:   sec(5),
			want: StateRollingBack,
			why:  "rolling back to v1: h3 failed to prepare v2, so no host switched: build failed",
		},
		{
			name: "preparing: every host lost",
			r:    doc(t, immutable, 3, nil),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0, "h1", "h2", "h3")
			},
			at:   sec(31),
			want: StateFailed,
		},
		{
			name: "switching: every host is stable on the release",
			r:    doc(t, immutable, 3, state(StateSwitching, nil)),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", now.Add(-sec(2))), "h1", "h2", "h3")
			},
			at:   sec(5),
			want: StateSucceeded,
		},
		{
			name: "switching: a host fails to switch, every host switches back",
			r:    doc(t, immutable, 3, state(StateSwitching, nil)),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(healthyOn("v2", t0), "h1", "h2").app(failedOn(r, "v2", "instance died"), "h3")
			},
			at:   sec(5),
			want: StateRollingBack,
			why:  "h3 failed to switch to v2, so every host switches back: instance died",
		},
		{
			name: "rolling back: hosts that have not read the rollback yet do not count as returned",
			r:    doc(t, rolling, 5, rollingBack),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).epoch(r.Epoch-1, "h1", "h2", "h3", "h4")
			},
			at: sec(5),
		},
		{
			name: "rolling back: some hosts are back, others still on their way",
			r:    doc(t, rolling, 5, rollingBack),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(AppReport{Serving: "v2", Target: "v1", Phase: PhaseRollingBack, Rollout: r.ID}, "h1")
			},
			at:   sec(5),
			want: StateRollingBack,
			why:  "h2 back on v1; h3 back on v1; h4 back on v1",
		},
		{
			name: "rolling back: every host that moved is back",
			r:    doc(t, rolling, 5, rollingBack),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now)
			},
			at:   sec(5),
			want: StateRolledBack,
			why:  "rolled back to v1",
		},
		{
			name: "rolling back: a host cannot return, and is named",
			r:    doc(t, rolling, 5, rollingBack),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).app(AppReport{Serving: "v2", Target: "v1", Phase: PhaseFailed, Rollout: r.ID, Error: "image pruned"}, "h2")
			},
			at:   sec(5),
			want: StateRolledBack,
			why:  "h2 could not return to v1: image pruned",
		},
		{
			name: "rolling back: a host that never reports back is given up at the host deadline",
			r:    doc(t, rolling, 5, rollingBack),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).epoch(r.Epoch-1, "h2")
			},
			at:   DefaultHostDeadline + sec(1),
			want: StateRolledBack,
			why:  "h2: it did not report v1 within the host deadline (10m0s)",
		},
		{
			name: "rolling back: lost and pending hosts are not waited for",
			r:    doc(t, rolling, 5, rollingBack),
			reports: func(r *Rollout, now time.Time) reps {
				return fresh(r, now).reported(t0, "h4", "h5")
			},
			at:    sec(31),
			want:  StateRolledBack,
			hosts: map[string]HostState{"h4": HostLost, "h5": HostLost},
		},
		{
			name: "a terminal rollout never changes",
			r:    doc(t, rolling, 5, state(StateSucceeded, nil)),
			at:   time.Hour,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := t0.Add(tc.at)
			var m reps
			if tc.reports != nil {
				m = tc.reports(tc.r, now)
			} else {
				m = fresh(tc.r, now)
			}
			before := tc.r.clone()
			next, why := Next(tc.r, m, now, t0.Add(tc.watching))
			if !maps.Equal(tc.r.Hosts, before.Hosts) || tc.r.State != before.State {
				t.Fatalf("Next changed the document it was given")
			}
			if tc.want == "" {
				if next != nil {
					t.Fatalf("changed to %s (%s), want no change", next.Progress(), why)
				}
				return
			}
			if next == nil {
				t.Fatalf("no change, want %s", tc.want)
			}
			if next.State != tc.want || next.Epoch != tc.r.Epoch+1 || !next.UpdatedAt.Equal(now) {
				t.Errorf("state %s epoch %d, want %s epoch %d", next.State, next.Epoch, tc.want, tc.r.Epoch+1)
			}
			for id, st := range tc.hosts {
				if got := next.Hosts[id].State; got != st {
					t.Errorf("%s is %s, want %s", id, got, st)
				}
			}
			if !strings.Contains(why, tc.why) {
				t.Errorf("why %q\nwant %q", why, tc.why)
			}
			if before.State != StateRollingBack && next.State == StateRollingBack && next.RollbackEpoch != next.Epoch {
				t.Errorf("rollback epoch %d, want the epoch of the write that began it (%d)", next.RollbackEpoch, next.Epoch)
			}
			if next.State.Terminal() != !next.FinishedAt.IsZero() {
				t.Errorf("finished at %v in state %s", next.FinishedAt, next.State)
			}
		})
	}
	if next, _ := Next(nil, nil, t0, t0); next != nil {
		t.Errorf("Next of no rollout: %+v", next)
	}
}

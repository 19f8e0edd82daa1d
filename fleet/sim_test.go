package fleet

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/rollout"
)

// t0 is when every test's fleet starts.
var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// tick is the simulation's step: every host and the evaluator act once
// per tick, as often as the fast poll's fastest.
const tick = FastPollMin

func release(label string) Release {
	return Release{App: "web", Label: label, Bundle: "s3://fleet/envs/prod/versions/web/" + label + ".zip"}
}

func settings(p rollout.Policy, batchSize int, kind rollout.BatchSizeType) Settings {
	s := DefaultSettings()
	s.Policy, s.BatchSize, s.BatchSizeType = p, batchSize, kind
	return s
}

// simHost is a host as the simulation plays it: it carries out what
// Desired says at once, and fails where told to.
type simHost struct {
	rep HostReport
	// fails says which labels fail on this host, and why.
	fails map[string]string
	// silent hosts have stopped (killed): they neither act nor report.
	silent bool
	// traffic gives the host's figures for a label it serves.
	traffic func(label string) health.Stats
	// served records when the host started serving each label.
	served map[string]time.Time
}

// sim is an environment: hosts, the rollout document, and a clock.
type sim struct {
	t     *testing.T
	now   time.Time
	r     *Rollout
	hosts map[string]*simHost
	// why is every transition's sentence, in order.
	why []string
	// check runs after every tick.
	check func(s *sim)
}

// newSim starts hosts h1..hn serving good as the last good version of web.
func newSim(t *testing.T, n int, good string) *sim {
	t.Helper()
	s := &sim{t: t, now: t0, hosts: map[string]*simHost{}}
	for i := 1; i <= n; i++ {
		s.join(fmt.Sprintf("h%d", i), good)
	}
	if good != "" {
		// The environment's history: good was rolled out before.
		s.r = &Rollout{Format: FormatVersion, ID: "before", Epoch: 1, State: StateSucceeded, Release: release(good), Good: map[string]Release{"web": release(good)}}
	}
	return s
}

// join adds a host that serves label (nothing when empty).
func (s *sim) join(id, label string) *simHost {
	h := &simHost{fails: map[string]string{}, served: map[string]time.Time{}}
	h.rep = HostReport{Host: id, ReportedAt: s.now, Apps: map[string]AppReport{}}
	if label != "" {
		h.rep.Apps["web"] = AppReport{Serving: label, Phase: PhaseHealthy, HealthySince: s.now.Add(-time.Hour)}
	}
	s.hosts[id] = h
	return h
}

func (s *sim) reports() map[string]HostReport {
	out := map[string]HostReport{}
	for id, h := range s.hosts {
		out[id] = h.rep
	}
	return out
}

// publish publishes label with settings, as the CLI does.
func (s *sim) publish(label string, st Settings) {
	s.t.Helper()
	r, err := NewRollout(s.r, Request{Release: release(label), Settings: st, By: "alice@laptop (sprout test)"}, s.reports(), s.now)
	if err != nil {
		s.t.Fatalf("publish %s: %v", label, err)
	}
	s.r = r
}

// act plays one host's poll: it reads the document, reports the epoch,
// and carries out what Desired says.
func (s *sim) act(id string, h *simHost) {
	if h.silent || s.r == nil {
		return
	}
	if s.r.Epoch > h.rep.Epoch {
		h.rep.Epoch, h.rep.Rollout = s.r.Epoch, s.r.ID
	}
	for _, a := range Desired(s.r, id, h.rep) {
		app := h.rep.Apps[a.Release.App]
		label := a.Release.Label
		if why, bad := h.fails[label]; bad {
			app.Target, app.Phase, app.Rollout, app.Error = label, PhaseFailed, a.Rollout, why
		} else {
			switch a.Kind {
			case ActPrepare:
				app.Target, app.Phase, app.Rollout, app.Error = label, PhasePrepared, a.Rollout, ""
			default:
				app = AppReport{Serving: label, Phase: PhaseHealthy, HealthySince: s.now, Rollout: a.Rollout}
				h.served[label] = s.now
			}
		}
		h.rep.Apps[a.Release.App] = app
	}
	h.rep.ReportedAt = s.now
	if app, ok := h.rep.Apps["web"]; ok && h.traffic != nil && app.Serving != "" {
		app.Traffic = &Traffic{Label: app.Serving, Stats: h.traffic(app.Serving)}
		h.rep.Apps["web"] = app
	}
}

// step plays one tick: every host, then one evaluator.
func (s *sim) step() {
	for _, id := range slices.Sorted(maps.Keys(s.hosts)) {
		s.act(id, s.hosts[id])
	}
	if next, why := Next(s.r, s.reports(), s.now, t0); next != nil {
		if next.Epoch != s.r.Epoch+1 {
			s.t.Fatalf("epoch %d after %d: every write raises it by one", next.Epoch, s.r.Epoch)
		}
		s.r = next
		s.why = append(s.why, why)
	}
	if s.check != nil {
		s.check(s)
	}
	s.now = s.now.Add(tick)
}

// run plays ticks until the rollout is over, then a few more so that the
// hosts act on the terminal document.
func (s *sim) run() {
	s.t.Helper()
	for i := 0; !s.r.State.Terminal(); i++ {
		if i > 20000 {
			s.t.Fatalf("the rollout never ended: %s\n%s", s.r.Progress(), strings.Join(s.why, "\n"))
		}
		s.step()
	}
	for range 4 {
		s.step()
	}
}

// serving returns what each host serves of web.
func (s *sim) serving() map[string]string {
	out := map[string]string{}
	for id, h := range s.hosts {
		out[id] = h.rep.Apps["web"].Serving
	}
	return out
}

func (s *sim) wantServing(want map[string]string) {
	s.t.Helper()
	if got := s.serving(); !maps.Equal(got, want) {
		s.t.Errorf("hosts serve %v, want %v\n%s", got, want, strings.Join(s.why, "\n"))
	}
}

func all(n int, label string) map[string]string {
	out := map[string]string{}
	for i := 1; i <= n; i++ {
		out[fmt.Sprintf("h%d", i)] = label
	}
	return out
}

// TestRolloutScenarios plays whole rollouts: the hosts carry out what
// Desired says, one evaluator computes Next every tick, and each scenario
// checks where the fleet ends and what the document says.
func TestRolloutScenarios(t *testing.T) {
	t.Run("rolling in batches of 2, in order, each within a poll of the last turning stable", func(t *testing.T) {
		s := newSim(t, 5, "v1")
		s.publish("v2", settings(rollout.Rolling, 2, rollout.Fixed))
		if got := s.r.Batches; !slices.EqualFunc(got, [][]string{{"h1", "h2"}, {"h3", "h4"}, {"h5"}}, slices.Equal) {
			t.Fatalf("batches %v", got)
		}
		s.run()
		if s.r.State != StateSucceeded || s.r.Good["web"].Label != "v2" {
			t.Fatalf("%s, good %v", s.r.Progress(), s.r.Good)
		}
		s.wantServing(all(5, "v2"))
		// Each batch started after the previous one was stable, and
		// within one evaluation (a poll) of it.
		for k := 1; k < len(s.r.Batches); k++ {
			var stable time.Time
			for _, id := range s.r.Batches[k-1] {
				stable = latest(stable, s.hosts[id].served["v2"].Add(DefaultStableFor))
			}
			for _, id := range s.r.Batches[k] {
				started := s.hosts[id].served["v2"]
				if started.Before(stable) || started.Sub(stable) > FastPollMax {
					t.Errorf("%s (batch %d) started %s after batch %d turned stable; want within (0, %s]", id, k+1, started.Sub(stable), k, FastPollMax)
				}
			}
		}
	})

	t.Run("a host fails in batch 2: every host that moved returns to the last good version", func(t *testing.T) {
		s := newSim(t, 5, "v2")
		for _, id := range []string{"h3", "h4", "h5"} {
			s.hosts[id].fails["v3"] = "health check failed: GET / answered 500"
		}
		s.publish("v3", settings(rollout.Rolling, 2, rollout.Fixed))
		var sawRollingBack bool
		s.check = func(s *sim) { sawRollingBack = sawRollingBack || s.r.State == StateRollingBack }
		s.run()
		if s.r.State != StateRolledBack || !sawRollingBack {
			t.Fatalf("%s (went through rolling-back: %v)", s.r.Progress(), sawRollingBack)
		}
		if s.r.FailedHost != "h3" || !strings.Contains(s.r.Reason, "h3 failed in batch 2 of 3: health check failed: GET / answered 500") {
			t.Errorf("reason %q (host %q), want h3 named with its error", s.r.Reason, s.r.FailedHost)
		}
		if s.r.Good["web"].Label != "v2" {
			t.Errorf("good %v, want v2 still", s.r.Good)
		}
		s.wantServing(all(5, "v2"))
		if _, moved := s.hosts["h5"].served["v3"]; moved || s.r.Hosts["h5"].State != HostPending {
			t.Errorf("h5, of batch 3, moved: %+v", s.r.Hosts["h5"])
		}
		for _, id := range []string{"h1", "h2", "h3", "h4"} {
			if !s.r.Hosts[id].Returned {
				t.Errorf("%s not recorded as returned: %+v", id, s.r.Hosts[id])
			}
		}
	})

	t.Run("a host is killed mid-rollout: lost, left out, the rollout finishes on the others", func(t *testing.T) {
		s := newSim(t, 5, "v1")
		s.publish("v2", settings(rollout.Rolling, 2, rollout.Fixed))
		s.check = func(s *sim) {
			if s.r.Batch == 1 && !s.hosts["h4"].silent {
				s.hosts["h4"].silent = true
			}
		}
		s.run()
		if s.r.State != StateSucceeded || s.r.Hosts["h4"].State != HostLost {
			t.Fatalf("%s; h4 %+v", s.r.Progress(), s.r.Hosts["h4"])
		}
		if !strings.Contains(s.r.Reason, "lost during the rollout: h4") {
			t.Errorf("reason %q does not say h4 was lost", s.r.Reason)
		}
		want := all(5, "v2")
		want["h4"] = "v1"
		s.wantServing(want)
		// It comes back: it serves the new last good version by itself.
		s.hosts["h4"].silent = false
		s.step()
		s.wantServing(all(5, "v2"))
	})

	t.Run("a host joins mid-rollout: it serves the last good version, then the new one once good", func(t *testing.T) {
		s := newSim(t, 4, "v1")
		s.publish("v2", settings(rollout.Rolling, 1, rollout.Fixed))
		s.step()
		s.join("h5", "")
		s.step()
		if got := s.hosts["h5"].rep.Apps["web"].Serving; got != "v1" || s.r.State.Terminal() {
			t.Fatalf("the joiner serves %q mid-rollout (%s), want v1", got, s.r.Progress())
		}
		if _, in := s.r.Hosts["h5"]; in {
			t.Errorf("the joiner was added to the frozen batches")
		}
		s.run()
		s.wantServing(all(5, "v2"))
	})

	t.Run("immutable: every host prepares, none switches until all are ready", func(t *testing.T) {
		s := newSim(t, 5, "v1")
		s.publish("v2", settings(rollout.Immutable, 100, rollout.Percentage))
		s.check = func(s *sim) {
			if s.r.State == StatePreparing {
				for id, label := range s.serving() {
					if label != "v1" {
						t.Fatalf("%s serves %s while others prepare", id, label)
					}
				}
			}
		}
		s.run()
		if s.r.State != StateSucceeded {
			t.Fatal(s.r.Progress())
		}
		s.wantServing(all(5, "v2"))
		if !slices.ContainsFunc(s.why, func(w string) bool {
			return strings.Contains(w, "every host has v2 ready: switching h1, h2, h3, h4, h5")
		}) {
			t.Errorf("no switch of every host at once:\n%s", strings.Join(s.why, "\n"))
		}
	})

	t.Run("immutable: one host fails to prepare, none switches", func(t *testing.T) {
		s := newSim(t, 5, "v1")
		s.hosts["h4"].fails["v2"] = "build failed"
		s.publish("v2", settings(rollout.Immutable, 100, rollout.Percentage))
		s.check = func(s *sim) {
			for id, h := range s.hosts {
				if _, switched := h.served["v2"]; switched {
					t.Fatalf("%s switched to v2", id)
				}
			}
		}
		s.run()
		if s.r.State != StateRolledBack || !strings.Contains(s.r.Reason, "h4 failed to prepare v2, so no host switched: build failed") {
			t.Fatalf("%s", s.r.Progress())
		}
		s.wantServing(all(5, "v1"))
		for id, h := range s.hosts {
			if a := h.rep.Apps["web"]; a.Phase == PhasePrepared {
				t.Errorf("%s still has v2 prepared: %+v", id, a)
			}
		}
	})
}

// TestAbortScenario aborts a rollout mid-batch: every host that moved
// returns by itself, and the rollout is recorded rolled back, saying who
// aborted it.
func TestAbortScenario(t *testing.T) {
	s := newSim(t, 4, "v1")
	s.publish("v2", settings(rollout.Rolling, 50, rollout.Percentage))
	for s.r.Batch == 0 {
		s.step()
	}
	r, err := Abort(s.r, "web", "bob@ci", s.now)
	if err != nil {
		t.Fatal(err)
	}
	s.r = r
	s.run()
	if s.r.State != StateRolledBack || s.r.Reason != "aborted by bob@ci" {
		t.Fatalf("%s", s.r.Progress())
	}
	s.wantServing(all(4, "v1"))
}

// TestFirstVersionFails: with no earlier good version there is nothing to
// return to, so the rollout fails, saying that the hosts that serve the
// version keep it.
func TestFirstVersionFails(t *testing.T) {
	s := newSim(t, 4, "")
	s.hosts["h3"].fails["v1"] = "no port"
	s.publish("v1", settings(rollout.Rolling, 2, rollout.Fixed))
	s.run()
	if s.r.State != StateFailed || !strings.Contains(s.r.Reason, "h3 failed in batch 2 of 2: no port; web has no earlier good version to return to, so hosts that serve v1 keep it") {
		t.Fatalf("%s", s.r.Progress())
	}
	if _, ok := s.r.Good["web"]; ok {
		t.Errorf("good %v: v1 was not good", s.r.Good)
	}
	// h4 deployed v1 in the same poll as h3 failed, and keeps it.
	s.wantServing(map[string]string{"h1": "v1", "h2": "v1", "h3": "", "h4": "v1"})
}

// canaryTraffic gives hosts figures: v2's 5xx share is bad5xx of 1,000
// requests, v1's 1 in 1,000.
func canaryTraffic(bad5xx int64) func(string) health.Stats {
	return func(label string) health.Stats {
		s := health.Stats{Span: 5 * time.Minute, Requests: 1000, P99: 20 * time.Millisecond}
		s.Classes[4] = 1
		if label == "v2" {
			s.Classes[4] = bad5xx
		}
		s.Classes[1] = s.Requests - s.Classes[4]
		return s
	}
}

// TestCanary plays TrafficSplitting across hosts: the first batch is the
// canary, judged against the other hosts after the evaluation time.
func TestCanary(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bad5xx int64
		state  State
		want   string
	}{
		{"as good as the others: promoted", 1, StateSucceeded, "not clearly worse; promoted"},
		{"clearly worse: rolled back everywhere", 200, StateRolledBack, "the canary is clearly worse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, 10, "v1")
			for _, h := range s.hosts {
				h.traffic = canaryTraffic(tc.bad5xx)
			}
			st := settings(rollout.TrafficSplitting, 100, rollout.Percentage)
			st.NewVersionPercent, st.EvaluationTime = 20, Duration(time.Minute)
			s.publish("v2", st)
			if got := s.r.Batches[0]; !slices.Equal(got, []string{"h1", "h10"}) {
				t.Fatalf("canary %v, want 20%% of 10 hosts", got)
			}
			var evaluatedFrom, evaluatedTo time.Time
			s.check = func(s *sim) {
				if s.r.State == StateEvaluating && evaluatedFrom.IsZero() {
					evaluatedFrom = s.now
				}
				if s.r.State != StateEvaluating && !evaluatedFrom.IsZero() && evaluatedTo.IsZero() {
					evaluatedTo = s.now
				}
			}
			s.run()
			if s.r.State != tc.state || !strings.Contains(s.r.Canary, "v2: 2000 requests") || !strings.Contains(s.r.Reason+s.r.Canary, tc.want) {
				t.Fatalf("%s; canary %q", s.r.Progress(), s.r.Canary)
			}
			if d := evaluatedTo.Sub(evaluatedFrom); d < time.Minute {
				t.Errorf("evaluated for %s, want the evaluation time (1m)", d)
			}
			if tc.state == StateSucceeded {
				s.wantServing(all(10, "v2"))
			} else {
				s.wantServing(all(10, "v1"))
				if s.r.FailedHost != "h1, h10" {
					t.Errorf("failed host %q, want the canary's", s.r.FailedHost)
				}
			}
		})
	}
}

package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/rollout"
)

// alive has hosts h1..hn report at t0.
func alive(n int) map[string]HostReport {
	m := map[string]HostReport{}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("h%d", i)
		m[id] = HostReport{Host: id, ReportedAt: t0}
	}
	return m
}

// TestBatches freezes the hosts alive at publication into batches with
// package rollout's arithmetic, counting hosts.
func TestBatches(t *testing.T) {
	split := func(percent int) Settings {
		s := settings(rollout.TrafficSplitting, 100, rollout.Percentage)
		s.NewVersionPercent = percent
		return s
	}
	for _, tc := range []struct {
		name string
		s    Settings
		n    int
		want string
	}{
		{"all at once", settings(rollout.AllAtOnce, 100, rollout.Percentage), 3, "[h1 h2 h3]"},
		{"rolling, fixed 2", settings(rollout.Rolling, 2, rollout.Fixed), 5, "[h1 h2] [h3 h4] [h5]"},
		{"with an additional batch: the same across hosts", settings(rollout.RollingWithAdditionalBatch, 2, rollout.Fixed), 5, "[h1 h2] [h3 h4] [h5]"},
		{"25% of 5 rounds up to 2", settings(rollout.Rolling, 25, rollout.Percentage), 5, "[h1 h2] [h3 h4] [h5]"},
		{"1% of 3 would round to 0: batches of one", settings(rollout.Rolling, 1, rollout.Percentage), 3, "[h1] [h2] [h3]"},
		{"fixed larger than the fleet: one batch", settings(rollout.Rolling, 10, rollout.Fixed), 3, "[h1 h2 h3]"},
		{"immutable: every host at once", settings(rollout.Immutable, 100, rollout.Percentage), 4, "[h1 h2 h3 h4]"},
		{"canary: 10% of 4 is one host", split(10), 4, "[h1] [h2 h3 h4]"},
		{"canary of every host: nothing to compare, one batch", split(100), 2, "[h1 h2]"},
		{"one host", split(10), 1, "[h1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRollout(nil, Request{Release: release("v1"), Settings: tc.s}, alive(tc.n), t0)
			if err != nil {
				t.Fatal(err)
			}
			var parts []string
			for _, b := range r.Batches {
				parts = append(parts, fmt.Sprint(b))
			}
			if got := strings.Join(parts, " "); got != tc.want {
				t.Errorf("batches %s, want %s", got, tc.want)
			}
		})
	}
}

// TestNewRollout publishes: the first batch moves at once, the last good
// versions are carried over, the epoch only grows, and hosts that have
// not reported lately are left out.
func TestNewRollout(t *testing.T) {
	reports := alive(3)
	reports["h9"] = HostReport{Host: "h9", ReportedAt: t0.Add(-AliveWithin - time.Second)}
	prev := &Rollout{ID: "before", Epoch: t0.Add(time.Hour).UnixMilli(), State: StateRolledBack, Good: map[string]Release{"web": release("v1"), "api": {App: "api", Label: "a1"}}}
	r, err := NewRollout(prev, Request{Release: release("v2"), Settings: settings(rollout.Rolling, 1, rollout.Fixed), By: "alice@laptop (sprout 1.0)"}, reports, t0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Epoch != prev.Epoch+1 || r.ID != "20250101T130000.001Z" {
		t.Errorf("epoch %d id %s: a clock behind the last epoch still raises it", r.Epoch, r.ID)
	}
	if r.State != StateRunning || r.Hosts["h1"].State != HostMoving || r.Hosts["h2"].State != HostPending || len(r.Hosts) != 3 {
		t.Errorf("%s %+v", r.Progress(), r.Hosts)
	}
	if r.Good["api"].Label != "a1" || r.Good["web"].Label != "v1" || r.By != "alice@laptop (sprout 1.0)" || r.Format != FormatVersion {
		t.Errorf("carried over %+v, by %q", r.Good, r.By)
	}
	r.Good["web"] = release("v9")
	if prev.Good["web"].Label != "v1" {
		t.Errorf("the new rollout shares its last good versions with the old one")
	}
	first, err := NewRollout(nil, Request{Release: release("v1"), Settings: DefaultSettings()}, alive(1), t0)
	if err != nil || first.Epoch != t0.UnixMilli() || first.ID != "20250101T120000.000Z" {
		t.Errorf("the first rollout: %v %+v", err, first)
	}
	im, _ := NewRollout(nil, Request{Release: release("v1"), Settings: settings(rollout.Immutable, 100, rollout.Percentage)}, alive(2), t0)
	if im.State != StatePreparing {
		t.Errorf("immutable starts %s, want preparing", im.State)
	}
}

// TestNewRolloutRefuses: a rollout in flight, an empty fleet, and bad
// input are refused, each with the fix.
func TestNewRolloutRefuses(t *testing.T) {
	inFlight, err := NewRollout(nil, Request{Release: release("v1"), Settings: DefaultSettings(), By: "alice@laptop"}, alive(2), t0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewRollout(inFlight, Request{Release: release("v2"), Settings: DefaultSettings(), By: "bob@ci"}, alive(2), t0)
	var busy *BusyError
	if !errors.As(err, &busy) || !errors.Is(err, ErrBusy) || busy.Rollout != inFlight ||
		!strings.Contains(err.Error(), "published by alice@laptop at 2025-01-01T12:00:00Z, is in flight (web v1: running, batch 1 of 1 (moving h1, h2)): wait for it with --wait, or stop it with sprout abort --app web") {
		t.Errorf("a second publication: %v", err)
	}
	if _, err := NewRollout(nil, Request{Release: release("v1"), Settings: DefaultSettings()}, nil, t0); !errors.Is(err, ErrNoHosts) || !strings.Contains(err.Error(), "start agents with this environment") {
		t.Errorf("an empty fleet: %v", err)
	}
	stale := map[string]HostReport{"h1": {Host: "h1", ReportedAt: t0.Add(-time.Hour)}}
	if _, err := NewRollout(nil, Request{Release: release("v1"), Settings: DefaultSettings()}, stale, t0); !errors.Is(err, ErrNoHosts) {
		t.Errorf("a fleet whose hosts stopped reporting: %v", err)
	}
	bad := func(change func(r *Request)) error {
		req := Request{Release: release("v1"), Settings: DefaultSettings()}
		change(&req)
		_, err := NewRollout(nil, req, alive(1), t0)
		return err
	}
	for _, tc := range []struct {
		change func(r *Request)
		want   string
	}{
		{func(r *Request) { r.Release.Label = "../v1" }, `version label "../v1" cannot name an object in S3`},
		{func(r *Request) { r.Release.App = "" }, `app name "" cannot name an object in S3`},
		{func(r *Request) { r.Release.Bundle = "/tmp/app.zip" }, "upload it as an application version first"},
		{func(r *Request) { r.Release.Env = map[string]string{"A": "x\ny"} }, "newline"},
		{func(r *Request) { r.Release.Port = 70000 }, "port 70000 is not a port"},
		{func(r *Request) { r.Settings.Policy = "Blue" }, "unknown deployment policy"},
		{func(r *Request) { r.Settings.BatchSize = 0 }, "batch size 0% is out of range"},
		{func(r *Request) { r.Settings.StableFor = Duration(-time.Second) }, "stable time -1s is negative"},
		{func(r *Request) { r.Settings.LostAfter = Duration(3 * time.Second) }, "lost-after 3s is too short: hosts report every 5s during a rollout, so use at least 10s"},
		{func(r *Request) { r.Settings.HostDeadline = Duration(time.Second) }, "host deadline 1s is too short"},
	} {
		if err := bad(tc.change); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v\nwant ErrInvalid with %q", err, tc.want)
		}
	}
}

// TestAbort stops a rollout in flight; it refuses what there is nothing
// to abort, naming why.
func TestAbort(t *testing.T) {
	r := doc(t, settings(rollout.Rolling, 2, rollout.Fixed), 5, nil)
	got, err := Abort(r, "web", "bob@ci", t0.Add(time.Minute))
	if err != nil || got.State != StateRollingBack || got.Reason != "aborted by bob@ci" || got.Epoch != r.Epoch+1 || got.RollbackEpoch != got.Epoch {
		t.Fatalf("abort: %v %+v", err, got)
	}
	if r.State != StateRunning {
		t.Errorf("Abort changed the document it was given")
	}
	noGood, _ := Abort(doc(t, DefaultSettings(), 2, func(r *Rollout) { r.Good = nil }), "", "bob@ci", t0)
	if noGood.State != StateFailed {
		t.Errorf("aborting a first version: %s, want failed", noGood.State)
	}
	for _, tc := range []struct {
		r    *Rollout
		app  string
		want string
	}{
		{nil, "web", "this environment has had no rollout"},
		{got, "web", "is already rolling back (aborted by bob@ci)"},
		{r, "api", "is of app web, not api: abort with --app web"},
		{&Rollout{ID: "x", State: StateSucceeded, Release: release("v2")}, "web", "the last rollout, x, is over (web v2: succeeded)"},
	} {
		if _, err := Abort(tc.r, tc.app, "bob@ci", t0); !errors.Is(err, ErrNotInFlight) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
}

// TestDocumentJSON: durations read as people write them, and a document
// survives a round trip.
func TestDocumentJSON(t *testing.T) {
	r := doc(t, settings(rollout.Rolling, 2, rollout.Fixed), 3, nil)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"stable_for":"2s"`) || !strings.Contains(string(b), `"lost_after":"30s"`) {
		t.Errorf("durations are not written as people read them: %s", b)
	}
	var back Rollout
	if err := json.Unmarshal(b, &back); err != nil || back.Settings != r.Settings || !slices.EqualFunc(back.Batches, r.Batches, slices.Equal) {
		t.Errorf("round trip: %v\n%+v\n%+v", err, back.Settings, r.Settings)
	}
	var d Duration
	if err := json.Unmarshal([]byte(`2000000000`), &d); err == nil {
		t.Errorf("a duration as a number was read as %s", time.Duration(d))
	}
}

// TestPolling: fast with jitter while a rollout is in flight, slow when
// idle; started hosts evaluate at every poll, others once per slow poll.
func TestPolling(t *testing.T) {
	r := doc(t, settings(rollout.Rolling, 2, rollout.Fixed), 5, nil)
	done := &Rollout{State: StateSucceeded}
	for _, tc := range []struct {
		r    *Rollout
		u    float64
		want time.Duration
		beat time.Duration
	}{
		{r, 0, FastPollMin, 4 * time.Second},
		{r, 0.999999, FastPollMax, HeartbeatInFlight},
		{done, 0, SlowPollMin, 48 * time.Second},
		{nil, 0.5, 3 * time.Second, 54 * time.Second},
	} {
		if got := PollInterval(tc.r, tc.u); got.Round(time.Millisecond) != tc.want {
			t.Errorf("poll interval %s, want %s", got, tc.want)
		}
		if got := Heartbeat(tc.r, tc.u); got.Round(time.Millisecond) != tc.beat {
			t.Errorf("heartbeat %s, want %s", got, tc.beat)
		}
	}
	if !Evaluates(r, "h1", 0) || Evaluates(r, "h3", time.Second) || !Evaluates(r, "h3", EvaluateEvery) || !Evaluates(r, "h9", EvaluateEvery) || Evaluates(r, "h3", SlowPollMax) || Evaluates(done, "h1", time.Hour) {
		t.Errorf("who evaluates is wrong")
	}
	split := doc(t, settings(rollout.TrafficSplitting, 100, rollout.Percentage), 5, nil)
	split.Settings.EvaluationTime = Duration(2 * time.Minute)
	long := doc(t, settings(rollout.TrafficSplitting, 100, rollout.Percentage), 5, nil)
	long.Settings.EvaluationTime = Duration(time.Hour)
	if TrafficSpan(split) != 2*time.Minute || TrafficSpan(long) != 5*time.Minute || TrafficSpan(r) != time.Minute {
		t.Errorf("traffic spans %s %s %s, want the evaluation time, at most the proxy's 5m, else 1m", TrafficSpan(split), TrafficSpan(long), TrafficSpan(r))
	}
}

package fleet

import (
	"fmt"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/rollout"
)

// Next decides what follows r, from every host's report, at now: the
// next document, with a sentence that says why, or nil when nothing
// changes. It is pure, so any agent may compute it; the store writes the
// result only over the document it was computed from.
//
// watchingSince is when the evaluator last regained the store (it started,
// or S3 answered again after failing): a host is lost only when its report
// is older than LostAfter counted from the latest of that report, the
// rollout's publication and watchingSince, so that after an outage the
// first evaluator does not find every report old and lose the whole fleet.
func Next(r *Rollout, reports map[string]HostReport, now, watchingSince time.Time) (*Rollout, string) {
	if r == nil || r.State.Terminal() {
		return nil, ""
	}
	t := newTurn(r, reports, now)
	t.markLost(watchingSince)
	switch t.r.State {
	case StateRunning:
		t.running()
	case StateEvaluating:
		t.evaluating()
	case StatePreparing:
		t.preparing()
	case StateSwitching:
		t.switching()
	case StateRollingBack:
		t.rollingBack()
	}
	if len(t.why) == 0 {
		return nil, ""
	}
	return t.result(r), strings.Join(t.why, "; ")
}

// turn is one computation of Next: the document being changed and what
// it is changed from.
type turn struct {
	r       *Rollout
	reports map[string]HostReport
	now     time.Time
	why     []string
}

func newTurn(r *Rollout, reports map[string]HostReport, now time.Time) *turn {
	return &turn{r: r.clone(), reports: reports, now: now}
}

// note records a change and why.
func (t *turn) note(format string, a ...any) { t.why = append(t.why, fmt.Sprintf(format, a...)) }

// result stamps the changed document with the next epoch.
func (t *turn) result(from *Rollout) *Rollout {
	t.r.Epoch = from.Epoch + 1
	t.r.UpdatedAt = t.now
	return t.r
}

func (t *turn) label() string { return t.r.Release.Label }

// set moves a host to st.
func (t *turn) set(id string, st HostState, reason string) {
	h := t.r.Hosts[id]
	h.State, h.Since, h.Reason = st, t.now, reason
	t.r.Hosts[id] = h
}

// app returns what host id last said of the rollout's app.
func (t *turn) app(id string) (HostReport, AppReport, bool) {
	rep, ok := t.reports[id]
	return rep, rep.Apps[t.r.Release.App], ok
}

// stable tells whether host id serves the release, healthy for StableFor.
func (t *turn) stable(id string) bool {
	_, a, _ := t.app(id)
	return a.Serving == t.label() && a.Phase == PhaseHealthy && !a.HealthySince.IsZero() &&
		t.now.Sub(a.HealthySince) >= time.Duration(t.r.Settings.StableFor)
}

// prepared tells whether host id has the release ready beside the old
// (or serves it already).
func (t *turn) prepared(id string) bool {
	_, a, _ := t.app(id)
	return a.Phase == PhasePrepared && a.Target == t.label() && a.Rollout == t.r.ID || t.stable(id)
}

// failure returns why host id failed, or "".
func (t *turn) failure(id string) string {
	_, a, _ := t.app(id)
	if a.Phase == PhaseFailed && a.Target == t.label() && a.Rollout == t.r.ID {
		if a.Error == "" {
			return "failed (the host gave no reason)"
		}
		return a.Error
	}
	return ""
}

// markLost marks lost every host whose report is too old.
func (t *turn) markLost(watchingSince time.Time) {
	limit := time.Duration(t.r.Settings.LostAfter)
	for _, id := range t.r.hostIDs() {
		if t.r.Hosts[id].State == HostLost {
			continue
		}
		rep, ok := t.reports[id]
		last := latest(t.r.PublishedAt, watchingSince, rep.ReportedAt)
		if t.now.Sub(last) <= limit {
			continue
		}
		reason := "no report in this rollout"
		if ok {
			reason = fmt.Sprintf("no report since %s (%s before)", rep.ReportedAt.UTC().Format(time.RFC3339), t.now.Sub(rep.ReportedAt).Round(time.Second))
		}
		t.set(id, HostLost, reason)
		t.note("%s lost: %s; left out", id, reason)
	}
}

// observe moves each moving host to reached when it got there, or to
// failed when it failed or missed HostDeadline; and fails a healthy host
// that turned unhealthy on the release.
func (t *turn) observe(reached HostState, got func(id string) bool) {
	deadline := time.Duration(t.r.Settings.HostDeadline)
	for _, id := range t.r.hostIDs() {
		h := t.r.Hosts[id]
		_, a, _ := t.app(id)
		failure := t.failure(id)
		switch {
		case h.State == HostHealthy && a.Serving == t.label() && a.Phase == PhaseUnhealthy:
			t.set(id, HostFailed, fmt.Sprintf("%s turned unhealthy on %s after it was stable", t.label(), id))
		case h.State != HostMoving:
		case failure != "":
			t.set(id, HostFailed, failure)
		case got(id):
			t.set(id, reached, "")
			t.note("%s %s", id, reached)
		case t.now.Sub(h.Since) > deadline:
			t.set(id, HostFailed, fmt.Sprintf("it did not get %s %s within the host deadline (%s)", t.label(), reached, deadline))
		}
	}
}

// stopOnFailure stops the rollout at the first failed host, saying what
// it failed at; it tells whether it did.
func (t *turn) stopOnFailure(at string) bool {
	failed := t.r.in(HostFailed)
	if len(failed) == 0 {
		return false
	}
	id := failed[0]
	t.stop(id, fmt.Sprintf("%s failed %s: %s", id, at, t.r.Hosts[id].Reason))
	return true
}

// stop ends the rollout because of reason: every host that moved returns
// to the app's last good release, or, with none, the rollout fails.
func (t *turn) stop(host, reason string) {
	t.r.Reason, t.r.FailedHost, t.r.StepSince = reason, host, t.now
	good, ok := t.r.Good[t.r.Release.App]
	if !ok {
		t.r.State, t.r.FinishedAt = StateFailed, t.now
		t.r.Reason += fmt.Sprintf("; %s has no earlier good version to return to, so hosts that serve %s keep it", t.r.Release.App, t.label())
		t.note("failed: %s", t.r.Reason)
		return
	}
	t.r.State, t.r.RollbackEpoch = StateRollingBack, t.r.Epoch+1
	t.note("rolling back to %s: %s", good.Label, reason)
}

// batchDone tells whether every host of the current batch is healthy or
// lost.
func (t *turn) batchDone() bool {
	for _, id := range t.r.Batches[t.r.Batch] {
		if st := t.r.Hosts[id].State; st != HostHealthy && st != HostLost {
			return false
		}
	}
	return true
}

// startBatch starts batch i: its hosts that are not lost move.
func (t *turn) startBatch(i int) {
	t.r.State, t.r.Batch, t.r.StepSince = StateRunning, i, t.now
	var ids []string
	for _, id := range t.r.Batches[i] {
		if t.r.Hosts[id].State == HostPending {
			t.set(id, HostMoving, "")
			ids = append(ids, id)
		}
	}
	t.note("batch %d of %d started: %s", i+1, len(t.r.Batches), orNone(ids))
}

// finish ends a rollout whose every host is healthy or lost.
func (t *turn) finish() {
	t.r.FinishedAt = t.now
	healthy := t.r.in(HostHealthy)
	if len(healthy) == 0 {
		t.r.State = StateFailed
		t.r.Reason = fmt.Sprintf("every host of the rollout was lost: %s was served healthy nowhere, so it is not recorded as good", t.label())
		t.note("failed: %s", t.r.Reason)
		return
	}
	t.r.State = StateSucceeded
	if t.r.Good == nil {
		t.r.Good = map[string]Release{}
	}
	t.r.Good[t.r.Release.App] = t.r.Release
	t.note("succeeded: %s serves healthy on %s", t.label(), strings.Join(healthy, ", "))
	if lost := t.r.in(HostLost); len(lost) > 0 {
		t.r.Reason = fmt.Sprintf("lost during the rollout: %s (they serve %s when they come back)", strings.Join(lost, ", "), t.label())
	}
}

func (t *turn) running() {
	t.observe(HostHealthy, t.stable)
	if t.stopOnFailure(fmt.Sprintf("in batch %d of %d", t.r.Batch+1, len(t.r.Batches))) || !t.batchDone() {
		return
	}
	switch {
	case t.r.Settings.Policy == rollout.TrafficSplitting && t.r.Batch == 0 && len(t.r.Batches) > 1:
		canary := t.canary()
		if len(canary) == 0 {
			t.stop("", "every canary host was lost: nothing is left to judge "+t.label()+" by")
			return
		}
		t.r.State, t.r.StepSince = StateEvaluating, t.now
		t.note("canary %s stable: evaluating %s for %s", strings.Join(canary, ", "), t.label(), time.Duration(t.r.Settings.EvaluationTime))
	case t.r.Batch+1 < len(t.r.Batches):
		t.startBatch(t.r.Batch + 1)
	default:
		t.finish()
	}
}

// canary returns the canary's hosts that are healthy on the release.
func (t *turn) canary() []string {
	var ids []string
	for _, id := range t.r.Batches[0] {
		if t.r.Hosts[id].State == HostHealthy {
			ids = append(ids, id)
		}
	}
	return ids
}

func (t *turn) evaluating() {
	t.observe(HostHealthy, t.stable)
	if t.stopOnFailure("during the canary's evaluation") {
		return
	}
	canary := t.canary()
	if len(canary) == 0 {
		t.stop("", "every canary host was lost during the evaluation: nothing is left to judge "+t.label()+" by")
		return
	}
	end := t.r.StepSince.Add(time.Duration(t.r.Settings.EvaluationTime))
	if t.now.Before(end) {
		return
	}
	var others []string
	for _, id := range t.r.hostIDs() {
		if t.r.Hosts[id].State == HostPending {
			others = append(others, id)
		}
	}
	// Judge from figures that cover the whole evaluation.
	for _, id := range append(others, canary...) {
		if t.reports[id].ReportedAt.Before(end) {
			return
		}
	}
	good := t.r.Good[t.r.Release.App]
	canaryStats, _ := t.traffic(canary, t.label())
	oldStats, judged := t.traffic(others, good.Label)
	var v rollout.Verdict
	if judged == 0 || good.Label == "" {
		v.Reason = fmt.Sprintf("no other host served the last good version to compare %s with; promoted on its health checks", t.label())
	} else {
		v = rollout.Judge(t.label(), canaryStats, good.Label, oldStats)
	}
	t.r.Canary = v.Reason
	if v.Worse {
		t.stop(strings.Join(canary, ", "), "the canary is clearly worse: "+v.Reason)
		return
	}
	t.note("canary promoted: %s", v.Reason)
	t.startBatch(1)
}

// traffic sums the figures of label that hosts ids reported, and says how
// many reported some. A side's p99 is the largest of its hosts' p99s: an
// upper bound of the side's p99, taken alike on both sides.
func (t *turn) traffic(ids []string, label string) (sum health.Stats, hosts int) {
	for _, id := range ids {
		_, a, _ := t.app(id)
		if a.Traffic == nil || a.Traffic.Label != label || a.Traffic.Stats.Requests == 0 {
			continue
		}
		s := a.Traffic.Stats
		hosts++
		sum.Span = max(sum.Span, s.Span)
		sum.Requests += s.Requests
		for i := range sum.Classes {
			sum.Classes[i] += s.Classes[i]
		}
		sum.P50, sum.P90, sum.P99 = max(sum.P50, s.P50), max(sum.P90, s.P90), max(sum.P99, s.P99)
	}
	return sum, hosts
}

func (t *turn) preparing() {
	t.observe(HostPrepared, t.prepared)
	if t.stopOnFailure("to prepare " + t.label() + ", so no host switched") {
		return
	}
	if len(t.r.in(HostMoving)) > 0 {
		return
	}
	ready := t.r.in(HostPrepared)
	if len(ready) == 0 {
		t.finish() // every host lost
		return
	}
	t.r.State, t.r.StepSince = StateSwitching, t.now
	for _, id := range ready {
		t.set(id, HostMoving, "")
	}
	t.note("every host has %s ready: switching %s", t.label(), strings.Join(ready, ", "))
}

func (t *turn) switching() {
	t.observe(HostHealthy, t.stable)
	if t.stopOnFailure("to switch to " + t.label() + ", so every host switches back") {
		return
	}
	if len(t.r.in(HostMoving)) == 0 {
		t.finish()
	}
}

// rollingBack waits until every host that moved is back on the last good
// release, or could not get there; then the rollout is rolled back.
func (t *turn) rollingBack() {
	good := t.r.Good[t.r.Release.App]
	deadline := time.Duration(t.r.Settings.HostDeadline)
	waiting := false
	for _, id := range t.r.hostIDs() {
		h := t.r.Hosts[id]
		if h.State == HostPending || h.State == HostLost || h.Returned || h.ReturnError != "" {
			continue
		}
		rep, a, ok := t.app(id)
		seen := ok && rep.Epoch >= t.r.RollbackEpoch
		switch {
		case seen && a.Serving == good.Label && !a.Phase.busy() && a.Phase != PhasePrepared:
			h.Returned = true
			t.note("%s back on %s", id, good.Label)
		case seen && a.Phase == PhaseFailed && a.Target == good.Label && a.Rollout == t.r.ID:
			h.ReturnError = a.Error
			t.note("%s could not return to %s: %s", id, good.Label, a.Error)
		case t.now.Sub(t.r.StepSince) > deadline:
			h.ReturnError = fmt.Sprintf("it did not report %s within the host deadline (%s)", good.Label, deadline)
			t.note("%s: %s", id, h.ReturnError)
		default:
			waiting = true
		}
		t.r.Hosts[id] = h
	}
	if waiting {
		return
	}
	var stuck []string
	for _, id := range t.r.hostIDs() {
		if e := t.r.Hosts[id].ReturnError; e != "" {
			stuck = append(stuck, fmt.Sprintf("%s could not return to %s: %s", id, good.Label, e))
		}
	}
	if len(stuck) > 0 {
		t.r.Reason += "; " + strings.Join(stuck, "; ")
	}
	t.r.State, t.r.FinishedAt = StateRolledBack, t.now
	t.note("rolled back to %s", good.Label)
}

// latest returns the latest of times.
func latest(times ...time.Time) time.Time {
	var l time.Time
	for _, x := range times {
		if x.After(l) {
			l = x
		}
	}
	return l
}

func orNone(ids []string) string {
	if len(ids) == 0 {
		return "none (every host of the batch was lost)"
	}
	return strings.Join(ids, ", ")
}

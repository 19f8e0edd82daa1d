package fleet

import (
	"fmt"
	"maps"
	"slices"
)

// ActionKind is what a host is told to do with one app.
type ActionKind string

// The actions.
const (
	// ActDeploy: serve Release, fetching its bundle when the host lacks it,
	// with the app's own per-host policy.
	ActDeploy ActionKind = "deploy"
	// ActPrepare: start Release's instances beside the serving ones,
	// healthy and out of the rotation (Immutable).
	ActPrepare ActionKind = "prepare"
	// ActSwitch: route to the prepared instances of Release, then drain and
	// retire the old ones.
	ActSwitch ActionKind = "switch"
	// ActRollBack: return to Release, the last good version, discarding
	// the rollout's version (serving or prepared).
	ActRollBack ActionKind = "roll-back"
)

// Action is one thing a host should do now.
type Action struct {
	Kind    ActionKind
	Release Release
	// Rollout is the id the host writes in its app's report (AppReport's
	// Rollout) while it carries the action out.
	Rollout string
	// Why says, for the host's events, what asked for it.
	Why string
}

// Desired is what host should do, for each app, given the environment's
// rollout r and the host's own report mine (what it serves and does, and
// the newest epoch it has read). It returns nothing for an app that is
// where it should be, that is on its way there, or whose attempt failed in
// this rollout (evaluators act on the failure; retrying would hide it).
// A document older than mine.Epoch is stale and asks for nothing.
//
// While the host works on something else, it should cancel that (its
// executor undoes it) and do what Desired says.
func Desired(r *Rollout, host string, mine HostReport) []Action {
	if r == nil || r.Epoch < mine.Epoch {
		return nil
	}
	apps := slices.Collect(maps.Keys(r.Good))
	if !slices.Contains(apps, r.Release.App) {
		apps = append(apps, r.Release.App)
	}
	slices.Sort(apps)
	var out []Action
	for _, app := range apps {
		if a, ok := desired(r, host, app, mine.Apps[app]); ok {
			out = append(out, a)
		}
	}
	return out
}

// desired is Desired for one app, which the host reports as cur.
func desired(r *Rollout, host, app string, cur AppReport) (Action, bool) {
	a, ok := wanted(r, host, app)
	if !ok {
		return Action{}, false
	}
	label := a.Release.Label
	switch {
	case cur.Phase.busy() && cur.Target == label:
		return Action{}, false // on its way
	case cur.Phase == PhaseFailed && cur.Target == label && cur.Rollout == r.ID:
		return Action{}, false // failed here: the evaluators act on it
	}
	switch a.Kind {
	case ActPrepare:
		if cur.Serving == label || cur.Phase == PhasePrepared && cur.Target == label {
			return Action{}, false
		}
	case ActSwitch:
		if cur.Serving == label {
			return Action{}, false
		}
		if cur.Phase != PhasePrepared || cur.Target != label {
			// The prepared instances are gone (the host restarted):
			// deploy, health-gated as ever.
			a.Kind = ActDeploy
		}
	default:
		// Serving label, with nothing else prepared or under way.
		if cur.Serving == label && cur.Phase != PhasePrepared && !cur.Phase.busy() {
			return Action{}, false
		}
		// Leaving the rollout's version (serving, prepared or on its
		// way) for the last good one is a roll back; a host that has
		// nothing, or an older version, deploys.
		leaving := label != r.Release.Label && (cur.Serving == r.Release.Label || cur.Target == r.Release.Label)
		if leaving || cur.Phase == PhasePrepared && cur.Serving == label {
			a.Kind = ActRollBack
		}
	}
	return a, true
}

// wanted is what host should run of app, before looking at what it runs.
func wanted(r *Rollout, host, app string) (Action, bool) {
	st, in := r.Hosts[host]
	if app == r.Release.App && in && inFlight(r) && st.State != HostPending && st.State != HostLost {
		a := Action{Kind: ActDeploy, Release: r.Release, Rollout: r.ID}
		switch r.State {
		case StatePreparing:
			a.Kind, a.Why = ActPrepare, fmt.Sprintf("rollout %s prepares %s beside the serving version on every host", r.ID, r.Release.Label)
			return a, true
		case StateSwitching:
			a.Kind, a.Why = ActSwitch, fmt.Sprintf("rollout %s: every host has %s ready; switching", r.ID, r.Release.Label)
			return a, true
		case StateRunning, StateEvaluating:
			a.Why = fmt.Sprintf("rollout %s, batch %d of %d", r.ID, st.Batch+1, len(r.Batches))
			return a, true
		}
	}
	good, ok := r.Good[app]
	if !ok {
		return Action{}, false
	}
	a := Action{Kind: ActDeploy, Release: good, Rollout: r.ID, Why: fmt.Sprintf("%s is the environment's last good version of %s", good.Label, app)}
	if app == r.Release.App && r.State == StateRollingBack {
		a.Why = fmt.Sprintf("rollout %s is rolling back: %s", r.ID, r.Reason)
	}
	return a, true
}

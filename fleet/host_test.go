package fleet

import (
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/rollout"
)

// TestDesired says what a host does, from the rollout and its own
// report, for each kind of host and state.
func TestDesired(t *testing.T) {
	rolling := settings(rollout.Rolling, 2, rollout.Fixed) // h1 h2 | h3 h4 | h5
	immutable := settings(rollout.Immutable, 100, rollout.Percentage)
	mine := func(r *Rollout, a AppReport) HostReport {
		return HostReport{Epoch: r.Epoch, Apps: map[string]AppReport{"web": a}}
	}
	onV1 := healthyOn("v1", t0)
	with := func(st State, change func(r *Rollout)) func(r *Rollout) {
		return func(r *Rollout) {
			r.State = st
			if st == StateRollingBack {
				r.Reason = "h3 failed in batch 2 of 3: boom"
			}
			if change != nil {
				change(r)
			}
		}
	}
	for _, tc := range []struct {
		name string
		r    *Rollout
		host string
		mine func(r *Rollout) HostReport
		// want is "kind label", or "" for nothing to do.
		want string
		why  string
	}{
		{"a host of the started batch deploys", doc(t, rolling, 5, nil), "h1",
			func(r *Rollout) HostReport { return mine(r, onV1) }, "deploy v2", "batch 1 of 3"},
		{"a pending host stays", doc(t, rolling, 5, nil), "h3",
			func(r *Rollout) HostReport { return mine(r, onV1) }, "", ""},
		{"a host on its way does nothing more", doc(t, rolling, 5, nil), "h1",
			func(r *Rollout) HostReport {
				return mine(r, AppReport{Serving: "v1", Target: "v2", Phase: PhaseDeploying, Rollout: r.ID})
			}, "", ""},
		{"a host that serves the release does nothing", doc(t, rolling, 5, nil), "h1",
			func(r *Rollout) HostReport { return mine(r, healthyOn("v2", t0)) }, "", ""},
		{"a host whose attempt failed in this rollout does not retry", doc(t, rolling, 5, nil), "h1",
			func(r *Rollout) HostReport { return mine(r, failedOn(r, "v2", "boom")) }, "", ""},
		{"a host whose attempt failed in an older rollout tries again", doc(t, rolling, 5, nil), "h1",
			func(r *Rollout) HostReport {
				a := failedOn(r, "v2", "boom")
				a.Rollout = "older"
				return mine(r, a)
			}, "deploy v2", ""},
		{"a stale document is ignored", doc(t, rolling, 5, nil), "h1",
			func(r *Rollout) HostReport {
				m := mine(r, onV1)
				m.Epoch = r.Epoch + 1
				return m
			}, "", ""},
		{"a lost host serves the last good version", doc(t, rolling, 5, func(r *Rollout) { hosts(r, HostLost, "h1") }), "h1",
			func(r *Rollout) HostReport { return mine(r, healthyOn("v2", t0)) }, "roll-back v1", "last good version"},
		{"a joiner deploys the last good version", doc(t, rolling, 5, nil), "h9",
			func(r *Rollout) HostReport { return HostReport{} }, "deploy v1", "last good version of web"},
		{"a host on an older version moves to the last good one", doc(t, rolling, 5, nil), "h9",
			func(r *Rollout) HostReport { return mine(r, healthyOn("v0", t0)) }, "deploy v1", ""},
		{"preparing: prepare beside the old", doc(t, immutable, 3, nil), "h1",
			func(r *Rollout) HostReport { return mine(r, onV1) }, "prepare v2", "prepares v2 beside"},
		{"preparing: a prepared host waits", doc(t, immutable, 3, func(r *Rollout) { hosts(r, HostPrepared, "h1") }), "h1",
			func(r *Rollout) HostReport {
				return mine(r, AppReport{Serving: "v1", Target: "v2", Phase: PhasePrepared, Rollout: r.ID})
			}, "", ""},
		{"switching: a prepared host switches", doc(t, immutable, 3, with(StateSwitching, nil)), "h1",
			func(r *Rollout) HostReport {
				return mine(r, AppReport{Serving: "v1", Target: "v2", Phase: PhasePrepared, Rollout: r.ID})
			}, "switch v2", "switching"},
		{"switching: a host that lost its prepared set deploys", doc(t, immutable, 3, with(StateSwitching, nil)), "h1",
			func(r *Rollout) HostReport { return mine(r, onV1) }, "deploy v2", ""},
		{"switching: a switched host does nothing", doc(t, immutable, 3, with(StateSwitching, nil)), "h1",
			func(r *Rollout) HostReport { return mine(r, healthyOn("v2", t0)) }, "", ""},
		{"rolling back: a host that moved rolls back", doc(t, rolling, 5, with(StateRollingBack, nil)), "h1",
			func(r *Rollout) HostReport { return mine(r, healthyOn("v2", t0)) }, "roll-back v1", "rolling back: h3 failed"},
		{"rolling back: a host still deploying the release is told to roll back", doc(t, rolling, 5, with(StateRollingBack, nil)), "h2",
			func(r *Rollout) HostReport {
				return mine(r, AppReport{Serving: "v1", Target: "v2", Phase: PhaseDeploying, Rollout: r.ID})
			}, "roll-back v1", ""},
		{"rolling back: a host with the release prepared discards it", doc(t, immutable, 3, with(StateRollingBack, nil)), "h1",
			func(r *Rollout) HostReport {
				return mine(r, AppReport{Serving: "v1", Target: "v2", Phase: PhasePrepared, Rollout: r.ID})
			}, "roll-back v1", ""},
		{"rolling back: a host whose deploy failed already serves the old version", doc(t, rolling, 5, with(StateRollingBack, nil)), "h3",
			func(r *Rollout) HostReport { return mine(r, failedOn(r, "v2", "boom")) }, "", ""},
		{"rolling back: a host on its way back waits", doc(t, rolling, 5, with(StateRollingBack, nil)), "h1",
			func(r *Rollout) HostReport {
				return mine(r, AppReport{Serving: "v2", Target: "v1", Phase: PhaseRollingBack, Rollout: r.ID})
			}, "", ""},
		{"succeeded: a host that missed the rollout moves to the new good version", doc(t, rolling, 5, with(StateSucceeded, func(r *Rollout) { r.Good["web"] = r.Release })), "h1",
			func(r *Rollout) HostReport { return mine(r, onV1) }, "deploy v2", "last good version"},
		{"failed with no good version: nothing to return to", doc(t, rolling, 5, with(StateFailed, func(r *Rollout) { r.Good = nil })), "h1",
			func(r *Rollout) HostReport { return mine(r, healthyOn("v2", t0)) }, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acts := Desired(tc.r, tc.host, tc.mine(tc.r))
			var got, why string
			if len(acts) > 1 {
				t.Fatalf("%d actions for one app: %+v", len(acts), acts)
			}
			if len(acts) == 1 {
				got, why = string(acts[0].Kind)+" "+acts[0].Release.Label, acts[0].Why
				if acts[0].Rollout != tc.r.ID {
					t.Errorf("the action is stamped %q, want the rollout's id %q", acts[0].Rollout, tc.r.ID)
				}
			}
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Errorf("Desired = %q (%q), want %q (%q)", got, why, tc.want, tc.why)
			}
		})
	}
}

// TestDesiredEveryApp: a host serves the last good version of every app
// of the environment, not only of the one rolling out.
func TestDesiredEveryApp(t *testing.T) {
	r := doc(t, settings(rollout.Rolling, 2, rollout.Fixed), 5, func(r *Rollout) {
		r.Good["api"] = Release{App: "api", Label: "a7", Bundle: "s3://fleet/envs/prod/versions/api/a7.zip"}
	})
	acts := Desired(r, "h1", HostReport{})
	if len(acts) != 2 || acts[0].Release.App != "api" || acts[0].Release.Label != "a7" || acts[1].Release.Label != "v2" {
		t.Fatalf("a new host in batch 1 is told %+v; want api a7 and web v2", acts)
	}
	if Desired(nil, "h1", HostReport{}) != nil {
		t.Errorf("an environment with no rollout asks for something")
	}
}

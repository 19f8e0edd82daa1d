package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/fleet"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// BenchmarkFleetRollout measures a Rolling rollout in batches of 25% of
// the hosts, with the default stable time, across an environment of 5 and
// of 20 agents (as TestFleet runs them: one sprout process each, on
// 127.0.1.N, sharing a loopback S3), against one host's deploy of the same
// bundle on an agent of its own. Each host builds its image from the
// bundle, as a real host does. Its figures, per rollout:
//
//   - rollout-s: the CLI's `deploy --env`, from start to exit;
//   - onehost-s: `deploy` of the same bundle as a fresh label on an agent
//     outside the environment, the median of three;
//   - batches: how many batches the rollout had;
//   - target-ratio: rollout-s over TARGETS.md's bound, batches ×
//     (onehost-s + 2 s) (≤ 1 meets it);
//   - first-s: from the CLI's start to the last host of the first batch
//     starting its deploy (the hosts' idle poll, mostly);
//   - batchdeploy-s: the slowest host's deploy in each batch (from its
//     "deploy of <label> started" event to its "<label> is serving"),
//     mean over the batches;
//   - gap-max-s, gap-mean-s: for each batch after the first, from the
//     moment the last host of the batch before turned stable (its "is
//     serving" event + stable_for) to the first host of the batch starting
//     its deploy (target ≤ 2 s);
//   - tail-s: from the last batch turning stable to the CLI's exit.
//
// So rollout-s ≈ first-s + batches × (batchdeploy-s + stable_for) +
// (batches − 1) × gap-mean-s + tail-s, give or take the spread of the
// starts within a batch.
//
// Run it with `go test -run '^$' -bench BenchmarkFleetRollout -benchtime 1x
// -timeout 20m ./e2e/`, or `make bench`.
func BenchmarkFleetRollout(b *testing.B) {
	for _, n := range []int{5, 20} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) { benchFleetRollout(b, n) })
	}
}

// coordinationPerBatch is what TARGETS.md allows a fleet rollout per batch
// beyond one host's deploy.
const coordinationPerBatch = 2 * time.Second

func benchFleetRollout(b *testing.B, n int) {
	testenv.Docker(b)
	fake := testenv.S3(b, "fleet")
	env := "s3://fleet/envs/prod/"
	dirs := b.TempDir()
	var hosts []*fleetHost
	for i := 1; i <= n; i++ {
		// Ids sort as strings: host-01 … host-20 keep batches in order.
		hosts = append(hosts, startFleetHost(b, fake, env, dirs, fmt.Sprintf("host-%02d", i), i))
	}
	cli := hosts[0]
	byID := map[string]*fleetHost{}
	for _, h := range hosts {
		byID[h.id] = h
	}
	app, port := testenv.Name("fleetbench"), testenv.FreePort(b)
	bundle := testenv.Bundle(b, "")
	deploy := func(label string, args ...string) {
		out, errOut, code := cli.sprout(append([]string{"deploy", bundle, "--env", env, "--app", app, "--label", label}, args...)...)
		if code != 0 {
			b.Fatalf("deploy %s: exit %d\n%s%s", label, code, out, errOut)
		}
	}
	// v1 everywhere at once, untimed: each rollout replaces a serving version.
	deploy("v1", "--port", fmt.Sprint(port), "--health-path", "/healthz", "--policy", "AllAtOnce")
	serving(b, hosts, port, "v1 ")

	single := startAgent(b)
	singleApp, singlePort := testenv.Name("onehost"), testenv.FreePort(b)
	single.mustSprout("deploy", bundle, "--app", singleApp, "--label", "v1", "--port", fmt.Sprint(singlePort), "--health-path", "/healthz")

	var sum struct { // over the iterations
		rollout, oneHost, target, first, slowest, tail, gaps, gapMax time.Duration
		batches, nGaps                                               int
	}
	iters := 0
	for b.Loop() {
		iters++
		label := fmt.Sprintf("r%d", iters)
		start := time.Now()
		deploy(label, "--policy", "Rolling", "--batch-size", "25", "--batch-size-type", "Percentage")
		end := time.Now()

		b.StopTimer()
		serving(b, hosts, port, label+" ")
		r := lastRollout(b, fake, label)
		times := map[string]hostTimes{}
		for _, h := range hosts {
			t := hostTimes{
				started: h.firstEvent(b, app, regexp.MustCompile(`^deploy of `+regexp.QuoteMeta(label)+` started`)),
				serving: h.firstEvent(b, app, regexp.MustCompile(`^`+regexp.QuoteMeta(label)+` is serving`)),
			}
			if t.started.IsZero() || t.serving.IsZero() {
				b.Fatalf("%s has no events of deploying %s", h.id, label)
			}
			times[h.id] = t
		}
		// One host's deploy: the median of three, as it is short and noisy.
		var ones []time.Duration
		for i := range 3 {
			oneStart := time.Now()
			single.mustSprout("deploy", bundle, "--app", singleApp, "--label", fmt.Sprintf("%s-%d", label, i))
			ones = append(ones, time.Since(oneStart))
		}
		slices.Sort(ones)
		oneHost := ones[1]

		f := figures(r.Batches, times, time.Duration(r.Settings.StableFor), start, end)
		for k, batch := range r.Batches {
			slowest := slices.MaxFunc(batch, func(x, y string) int {
				return cmp.Compare(times[x].serving.Sub(times[x].started), times[y].serving.Sub(times[y].started))
			})
			b.Logf("%s, batch %d: slowest %s %s (%s)", label, k+1, slowest, f.slowest[k].Round(time.Millisecond), byID[slowest].steps(b, app, label))
		}
		sum.rollout += end.Sub(start)
		sum.oneHost += oneHost
		sum.batches += len(r.Batches)
		sum.target += time.Duration(len(r.Batches)) * (oneHost + coordinationPerBatch)
		sum.first += f.first
		sum.tail += f.tail
		for _, d := range f.slowest {
			sum.slowest += d / time.Duration(len(f.slowest))
		}
		for _, g := range f.gaps {
			sum.gaps += g
			sum.gapMax = max(sum.gapMax, g)
			sum.nGaps++
		}
		b.StartTimer()
	}
	perIter := func(d time.Duration) float64 { return d.Seconds() / float64(iters) }
	b.ReportMetric(perIter(sum.rollout), "rollout-s")
	b.ReportMetric(perIter(sum.oneHost), "onehost-s")
	b.ReportMetric(float64(sum.batches)/float64(iters), "batches")
	b.ReportMetric(sum.rollout.Seconds()/sum.target.Seconds(), "target-ratio")
	b.ReportMetric(perIter(sum.first), "first-s")
	b.ReportMetric(perIter(sum.slowest), "batchdeploy-s")
	b.ReportMetric(perIter(sum.tail), "tail-s")
	b.ReportMetric(sum.gapMax.Seconds(), "gap-max-s")
	b.ReportMetric(sum.gaps.Seconds()/float64(max(sum.nGaps, 1)), "gap-mean-s")
}

// hostTimes are when a host started deploying a rollout's release and
// when it served it, from its events.
type hostTimes struct{ started, serving time.Time }

// rolloutFigures are where one rollout's time went.
type rolloutFigures struct {
	// first is from the CLI's start to the last host of the first batch
	// starting its deploy.
	first time.Duration
	// slowest is, per batch, its slowest host's deploy.
	slowest []time.Duration
	// gaps are, per batch after the first, from the moment the batch
	// before turned stable (its last host serving, plus stable_for) to the
	// first of the batch's hosts starting its deploy.
	gaps []time.Duration
	// tail is from the last batch turning stable to the CLI's exit.
	tail time.Duration
}

// figures tells where the time of a rollout in batches went, from its
// hosts' times; the CLI ran from start to end.
func figures(batches [][]string, times map[string]hostTimes, stableFor time.Duration, start, end time.Time) rolloutFigures {
	var f rolloutFigures
	var stable time.Time // when the batch before turned stable
	for k, batch := range batches {
		var firstStart, lastStart, lastServing time.Time
		var slowest time.Duration
		for _, id := range batch {
			t := times[id]
			if firstStart.IsZero() || t.started.Before(firstStart) {
				firstStart = t.started
			}
			lastStart, lastServing = latest(lastStart, t.started), latest(lastServing, t.serving)
			slowest = max(slowest, t.serving.Sub(t.started))
		}
		if k == 0 {
			f.first = lastStart.Sub(start)
		} else {
			f.gaps = append(f.gaps, firstStart.Sub(stable))
		}
		f.slowest = append(f.slowest, slowest)
		stable = lastServing.Add(stableFor)
	}
	f.tail = end.Sub(stable)
	return f
}

// steps says how long each step of the host's deploy of label took.
func (h *fleetHost) steps(t testing.TB, app, label string) string {
	t.Helper()
	vs, err := api.NewClient(h.socket).Versions(context.Background(), app)
	if err != nil {
		t.Fatalf("%s: versions: %v", h.id, err)
	}
	for _, v := range vs {
		if v.Label != label {
			continue
		}
		var b strings.Builder
		for _, step := range []string{agent.StepFetch, agent.StepUnpack, agent.StepBuild, agent.StepStart, agent.StepHealth, agent.StepSwap, agent.StepDrain, agent.StepRetire, agent.StepRecord} {
			if ms, ok := v.Steps[step]; ok {
				fmt.Fprintf(&b, " %s %dms", step, ms)
			}
		}
		return strings.TrimSpace(b.String())
	}
	return "no version " + label
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// lastRollout reads the environment's rollout.json, which must be the
// succeeded rollout of label.
func lastRollout(b *testing.B, fake *testenv.FakeS3, label string) *fleet.Rollout {
	b.Helper()
	body, ok := fake.Get(b, "fleet", "envs/prod/rollout.json")
	var r fleet.Rollout
	if !ok {
		b.Fatalf("no rollout.json: %s", body)
	}
	if err := json.Unmarshal(body, &r); err != nil {
		b.Fatalf("rollout.json: %v", err)
	}
	if r.Release.Label != label || r.State != fleet.StateSucceeded || !slices.Equal(slices.Concat(r.Batches...), slices.Sorted(maps.Keys(r.Hosts))) {
		b.Fatalf("rollout.json is not %s's succeeded rollout of every host: %s", label, body)
	}
	return &r
}
